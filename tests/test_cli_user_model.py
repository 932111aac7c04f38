"""The CLI with the user's own model (class path) and the user's own LightningDataModule."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from imagefolder_fixture import make_image_folder

from attnround_pl import cli

USER_CNN = Path(__file__).parent / "support" / "user_cnn.py"

USER_DATA = '''
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class RandomImages(pl.LightningDataModule):
    """A user's own data module: labelled 16x16 RGB images."""

    def __init__(self, count: int = 24, classes: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(count, 3, 16, 16, generator=g)
        self.y = torch.randint(0, classes, (count,), generator=g)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)

    def test_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)
'''


def _config(tmp_path: Path, data: dict, model: dict | None = None) -> Path:
    net = {"class_path": "my_project_cnn.UserCNN", "init_args": {"width": 8, "classes": 4}}
    config = {
        "model": model or {"net": net},
        "data": data,
        "quant": {"w_bits": 4, "a_bits": 4},
        "recon": {"iters": 2, "batch_size": 4},
        "run": {"out_dir": str(tmp_path / "runs"), "name": "user", "progress": False},
        "trainer": {"accelerator": "cpu"},
    }
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _image_folder(root: Path, per_class: int, size: int, crop: int) -> dict:
    """A labelled image folder of 4 classes (half as many validation images) as --data."""
    train, val = make_image_folder(root / "img", classes=4, train_per_class=per_class,
                                   val_per_class=per_class // 2, size=size)
    return {
        "class_path": "attnround_pl.data.ImageFolderDataModule",
        "init_args": {"train_root": str(train), "val_root": str(val),
                      "calib_size": 4 * per_class, "batch_size": 2 * per_class,
                      "num_workers": 0, "resize": size, "crop": crop},
    }


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project folder: their model file next to their config; the CLI runs there."""
    shutil.copy(USER_CNN, tmp_path / "my_project_cnn.py")
    (tmp_path / "my_project_data.py").write_text(USER_DATA)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_class_path_model_on_an_image_folder_calibrates_evaluates_exports(project, capsys):
    data = _image_folder(project, per_class=4, size=20, crop=16)
    assert cli.main(["calibrate", "--config", str(_config(project, data))]) == 0
    run = project / "runs" / "user"
    report = json.loads((run / "report.json").read_text())
    assert report["model"] == "UserCNN"
    assert report["model_source"] == {"kind": "import", "name": "my_project_cnn.UserCNN",
                                      "init_args": {"width": 8, "classes": 4, "in_channels": 3},
                                      "num_classes": None}
    assert 0 <= report["quant_top1"] <= 100 and report["eval_data"].endswith("evaluation split")
    units = {u["name"]: u["layers"] for u in report["units"]}
    # the residual written in forward: one region, the stem joined to it (the default recipe)
    assert units["stem..res_b"] == ["stem", "res_a", "res_b"]
    capsys.readouterr()
    assert cli.main(["evaluate", "--run", str(run)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["quant_top1"] == pytest.approx(report["quant_top1"])
    assert out["quant_fidelity"]["output"]["sqnr_db"] == pytest.approx(
        report["quant_fidelity"]["output"]["sqnr_db"], rel=1e-5
    )
    assert cli.main(["export", "--run", str(run), "--format", "state"]) == 0
    exported = json.loads((run / "report.json").read_text())
    assert exported["state_max_abs_diff"] == 0.0 and exported["state_images"] == 8


def test_users_own_lightning_data_module(project, capsys):
    data = {"class_path": "my_project_data.RandomImages", "init_args": {"count": 24}}
    assert cli.main(["calibrate", "--config", str(_config(project, data))]) == 0
    report = json.loads((project / "runs" / "user" / "report.json").read_text())
    assert report["calib_size"] == 24  # its train_dataloader fed calibration
    assert report["eval_data"] == "the data module's evaluation split"
    assert report["quant_fidelity"]["output"]["samples"] == 24
    assert "quant_top1" in report  # its test_dataloader carries labels


def test_unknown_class_path_is_one_line(project, capsys):
    data = {"class_path": "my_project_data.RandomImages"}
    config = _config(project, data)
    text = config.read_text().replace("my_project_cnn.UserCNN", "my_project_cnn.NoSuchNet")
    config.write_text(text)
    assert cli.main(["calibrate", "--config", str(config)]) == 2  # refused while parsing
    assert capsys.readouterr().err == (
        "attnround-pl calibrate: error: model.net: class_path 'my_project_cnn.NoSuchNet': "
        "module 'my_project_cnn' has no attribute 'NoSuchNet'\n"
    )


USER_LIT = '''
import lightning.pytorch as pl
import torch.nn.functional as F

from my_project_cnn import UserCNN


class LitNet(pl.LightningModule):
    """A user's LightningModule: the network under self.model, hyperparameters saved."""

    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.model = UserCNN(width, classes)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)
'''


def test_users_lightning_module_with_its_checkpoint(project, capsys):
    import torch

    (project / "my_project_lit.py").write_text(USER_LIT)
    from my_project_lit import LitNet

    torch.manual_seed(1)
    trained = LitNet(width=8)
    # what Lightning's ModelCheckpoint writes: the state dict beside other entries
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, project / "lit.ckpt")
    data = {"class_path": "my_project_data.RandomImages", "init_args": {"count": 16}}
    net = {"class_path": "my_project_lit.LitNet", "init_args": {"width": 8}}
    config = _config(project, data, {"net": net, "checkpoint": "lit.ckpt"})
    assert cli.main(["calibrate", "--config", str(config)]) == 0
    report = json.loads((project / "runs" / "user" / "report.json").read_text())
    assert report["model"] == "LitNet"
    assert report["model_source"]["name"] == "my_project_lit.LitNet"
    x = torch.randn(4, 3, 16, 16)
    import attnround_pl

    reloaded = attnround_pl.load(project / "runs" / "user")  # rebuilt from the class path
    assert reloaded.report.model == "LitNet"
    # the checkpoint's weights were calibrated: the quantized model tracks that net, not
    # another initialisation of the same class
    torch.manual_seed(2)
    other = LitNet(width=8).eval()
    with torch.no_grad():
        out = reloaded(x)
        close = torch.nn.functional.cosine_similarity(out, trained.eval()(x)).mean()
        far = torch.nn.functional.cosine_similarity(out, other(x)).mean()
    assert close > 0.95 and far < 0.5


def test_python_lightning_module_with_saved_hparams_reloads_by_itself(project):
    import torch

    (project / "my_project_lit.py").write_text(USER_LIT)
    from my_project_lit import LitNet

    import attnround_pl

    torch.manual_seed(0)
    qmodel = attnround_pl.quantize(
        LitNet(width=8), torch.randn(16, 3, 16, 16), iters=1, progress=False
    )
    assert qmodel.float_source.kind == "import"
    assert qmodel.float_source.init_args == {"width": 8, "classes": 4}
    path = attnround_pl.save(qmodel, project / "lit_q.pt")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(attnround_pl.load(path)(x), qmodel(x))


def test_any_torchvision_model_by_name(project, capsys):
    data = _image_folder(project, per_class=2, size=36, crop=32)
    model = {"arch": "squeezenet1_1", "weights": None, "num_classes": 4}
    assert cli.main(["calibrate", "--config", str(_config(project, data, model))]) == 0
    run = project / "runs" / "user"
    report = json.loads((run / "report.json").read_text())
    assert report["model_source"] == {"kind": "zoo", "name": "squeezenet1_1", "init_args": {},
                                      "num_classes": 4}
    # first conv, 8 fire modules x (squeeze conv, the concat of its two expand convs), classifier;
    # the default joins the first conv and fire 1's squeeze to fire 1's expand region, and the
    # classifier to fire 8's (recon.join_end_layers)
    assert report["unit_rules"] == {"graph": 1 + 8 * 2 + 1 - 3}
    names = [u["name"] for u in report["units"]]
    assert names[0].startswith("features.0..") and names[-1].endswith("..classifier.1")
    assert cli.main(["export", "--run", str(run), "--format", "onnx"]) == 0
    exported = json.loads((run / "report.json").read_text())
    assert exported["onnx_argmax_mismatch"] == 0 and exported["onnx_images"] == 4
