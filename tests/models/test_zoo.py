import pytest
import torch

from attnround_pl.models import ModelLoadError, build_model, embedded_info
from attnround_pl.models.zoo import embedded_checkpoint


def test_unknown_model_lists_available():
    with pytest.raises(ModelLoadError, match="unknown model 'resnet21'; available: mobilenetv2"):
        build_model("resnet21")


def test_missing_torchvision_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"Put the file resnet18-.*\.pth at .*hub/checkpoints"):
        build_model("resnet18")
    with pytest.raises(ModelLoadError, match="no regnet_x_600mf weights"):
        build_model("regnet_x_600mf")


def test_torchvision_weights_from_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = torchvision.models.get_model_weights("resnet18").DEFAULT
    ref = build_model("resnet18", weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / spec.url.rsplit("/", 1)[1])
    model = build_model("resnet18")
    assert torch.equal(model.fc.weight, ref.fc.weight)


def test_embedded_models_refuse_a_weights_value_they_would_ignore(tmp_path):
    path = tmp_path / "mine.pt"
    with pytest.raises(
        ModelLoadError, match=r"weights '.*mine.pt' for resnet20: .*model.checkpoint"
    ):
        build_model("resnet20", weights=str(path))
    with pytest.raises(ModelLoadError, match="weights 'IMAGENET1K_V1' for mobilenetv2"):
        build_model("mobilenetv2", weights="IMAGENET1K_V1")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_model("resnet20", checkpoint=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="corrupt or not a torch file"):
        build_model("resnet20", checkpoint=bad)
    other = tmp_path / "mbv2.pt"
    torch.save(build_model("mobilenetv2", weights=None).state_dict(), other)
    with pytest.raises(ModelLoadError, match="does not match architecture 'resnet20': missing"):
        build_model("resnet20", checkpoint=other)
    wide = tmp_path / "wide.pt"
    torch.save(build_model("resnet20", weights=None, num_classes=7).state_dict(), wide)
    with pytest.raises(ModelLoadError, match=r"wrong shapes \['fc.weight: checkpoint \(7, 64\)"):
        build_model("resnet20", checkpoint=wide)
    state = build_model("resnet20", weights=None).state_dict()
    state["fc.bias"][0] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save({"state_dict": state}, nan)
    with pytest.raises(ModelLoadError, match="'fc.bias' contains NaN"):
        build_model("resnet20", checkpoint=nan)


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2"])
def test_embedded_checkpoints_load_with_recorded_accuracy(arch):
    assert embedded_checkpoint(arch).is_file()
    info = embedded_info(arch)
    assert info["float_top1"] >= 92.0
    model = build_model(arch)
    assert not model.training
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
