"""docs/export.md's onnxruntime snippet runs as printed, and exported models carry their
preprocessing (ONNX metadata_props, the state file's meta, the checkpoint)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from doc_blocks import python_block
from fmnist_fixture import make_fashion_mnist
from imagefolder_fixture import make_image_folder
from PIL import Image
from torchvision import transforms
from torchvision.datasets import FashionMNIST
from user_cnn import UserCNN

import attnround_pl
from attnround_pl.calib import FloatModel, ReconConfig, RunConfig, calibrate
from attnround_pl.data import FashionMNISTDataModule, ImageFolderDataModule, Preprocessing
from attnround_pl.data.fashion_mnist_files import raw_dir
from attnround_pl.data.modules import FMNIST_MEAN, FMNIST_STD
from attnround_pl.export import export_onnx, read_onnx_metadata, read_quantized, read_state
from attnround_pl.quant import QuantConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"
FMNIST_PREPROCESSING = {
    "input_shape": [1, 28, 28],
    "channel_order": "L",
    "mean": list(FMNIST_MEAN),
    "std": list(FMNIST_STD),
    "pixel_range": [0.0, 1.0],
    "resize": None,
    "crop": None,
    "transform": "convert to L -> ToTensor (pixels / 255) -> Normalize(mean, std)",
}


def snippet() -> str:
    return python_block(DOC, "onnx-snippet")


def run_snippet(folder: Path, monkeypatch, capsys) -> tuple[str, dict]:
    """Run the snippet as printed in ``folder`` (holding quantized.onnx and image.png)."""
    monkeypatch.chdir(folder)
    namespace: dict = {}
    capsys.readouterr()
    exec(compile(snippet(), str(DOC), "exec"), namespace)
    return capsys.readouterr().out, namespace


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    """A finished ResNet-20 run (embedded weights, 2 iterations) on tiny Fashion-MNIST files,
    exported to both formats by the run itself."""
    root = tmp_path_factory.mktemp("fmnist")
    make_fashion_mnist(raw_dir(root / "data"), n_train=200, n_test=60)
    data = FashionMNISTDataModule(root=str(root / "data"), calib_size=20, batch_size=30)
    run = RunConfig(out_dir=str(root / "runs"), name="r", progress=False, eval_float=False,
                    eval_nearest=False, export=["onnx", "state"])
    torch.manual_seed(0)
    calibrate(FloatModel("resnet20"), data, QuantConfig(), ReconConfig(iters=2, batch_size=4),
              run, {"accelerator": "cpu", "devices": 1})
    return root / "runs" / "r", data


def test_fashion_mnist_exports_record_its_preprocessing_and_classes(fmnist_run):
    run_dir, _ = fmnist_run
    assert read_onnx_metadata(run_dir / "quantized.onnx") == {
        **FMNIST_PREPROCESSING, "num_classes": 10, "input_name": "input"}
    state_meta = read_state(run_dir / "quantized_state.safetensors")["meta"]
    assert state_meta["preprocessing"] == FMNIST_PREPROCESSING
    assert state_meta["num_classes"] == 10 and state_meta["arch"] == "resnet20"
    checkpoint_meta = read_quantized(run_dir / "quantized.pt")["meta"]
    assert checkpoint_meta["preprocessing"] == FMNIST_PREPROCESSING
    qmodel = attnround_pl.load(run_dir)
    assert qmodel.preprocessing == Preprocessing.from_dict(FMNIST_PREPROCESSING)
    assert qmodel.output_classes == 10


def test_snippet_predicts_what_pytorch_predicts_on_a_fashion_mnist_image(
    fmnist_run, tmp_path, monkeypatch, capsys
):
    run_dir, data = fmnist_run
    index = 5  # its class differs when the input is not normalised: a snippet that skipped
    # the mean/std would print another class
    pixels = FashionMNIST(str(data.root), train=False).data[index].numpy()
    Image.fromarray(pixels).save(tmp_path / "image.png")
    shutil.copy(run_dir / "quantized.onnx", tmp_path / "quantized.onnx")
    qmodel = attnround_pl.load(run_dir)
    expected = data.eval_split()[index][0]  # the data module's own preprocessing
    with torch.no_grad():
        predicted = int(qmodel(expected[None]).argmax())
        raw = torch.from_numpy(pixels).float()[None, None] / 255
        assert int(qmodel(raw).argmax()) != predicted
    out, namespace = run_snippet(tmp_path, monkeypatch, capsys)
    assert np.array_equal(namespace["x"], expected.numpy())
    assert out == f"class {predicted} of 10\n"


def test_snippet_resizes_and_crops_an_rgb_image_as_the_image_folder_did(
    tmp_path, monkeypatch, capsys
):
    train, val = make_image_folder(tmp_path / "images", classes=3, train_per_class=4,
                                   val_per_class=2)
    data = ImageFolderDataModule(str(train), str(val), calib_size=12, batch_size=6,
                                 num_workers=0, resize=36, crop=32)
    torch.manual_seed(0)
    qmodel = attnround_pl.quantize(UserCNN(classes=3).eval(), data, iters=2, progress=False)
    assert qmodel.preprocessing.resize == 36 and qmodel.preprocessing.crop == 32
    folder = tmp_path / "deploy"
    folder.mkdir()
    export_onnx(qmodel, torch.zeros(1, 3, 32, 32), folder / "quantized.onnx")  # no meta: the
    # model's own preprocessing and class count
    meta = read_onnx_metadata(folder / "quantized.onnx")
    assert meta["input_shape"] == [3, 32, 32] and meta["channel_order"] == "RGB"
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["num_classes"] == 3
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, size=(41, 57, 3), dtype=np.uint8))
    photo.save(folder / "image.png")  # 57 x 41: the resize and the crop both change it
    same = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32),
                               transforms.ToTensor(),
                               transforms.Normalize(data.mean, data.std)])
    expected = same(Image.open(folder / "image.png").convert("RGB"))
    with torch.no_grad():
        predicted = int(qmodel(expected[None]).argmax())
    out, namespace = run_snippet(folder, monkeypatch, capsys)
    assert np.array_equal(namespace["x"], expected.numpy())
    assert out == f"class {predicted} of 3\n"
