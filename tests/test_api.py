"""The Python API: any nn.Module and any source of images, in a few lines."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from user_cnn import UserCNN

import attnround_pl
from attnround_pl.errors import InputError, SettingError
from attnround_pl.models import ModelLoadError
from attnround_pl.quant import QuantLayer


def _images(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g)


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = UserCNN().eval()
    loader = DataLoader(TensorDataset(_images(), torch.zeros(48, dtype=torch.long)), batch_size=16)
    qmodel = attnround_pl.quantize(model, loader, w_bits=4, a_bits=4, iters=2, progress=False)
    return model, qmodel


def test_quantize_returns_a_ready_model_with_its_report(quantized):
    model, qmodel = quantized
    x = _images(4, seed=1)
    out = qmodel(x)
    assert out.shape == (4, 4) and torch.isfinite(out).all()
    assert not any(isinstance(m, QuantLayer) for m in model.modules())  # the float model is kept
    report = qmodel.report
    assert report.calib_size == 48
    assert report.eval_data.startswith("calibration images")  # no evaluation data given
    assert report.quantized.top1 is None  # labels are ignored for calibration; none to evaluate
    fid = report.quantized.fidelity["output"]
    assert fid.samples == 48 and -1.0 <= fid.cosine <= 1.0 and fid.max_abs_diff > 0
    assert report.nearest.fidelity["output"].samples == 48
    # the residual written in forward is one region, both of its convs learned together; by
    # default the stem joins it and the head the region before it (recon.join_end_layers)
    layers = {u.name: u.layers for u in report.units}
    assert layers == {"stem..res_b": ["stem", "res_a", "res_b"],
                      "branch_1x1..head": ["branch_1x1", "branch_3x3", "head"]}
    assert [u.name for u in report.unit_fidelity] == list(layers)
    # the first and last layers to run keep 8 bits, the others 4
    bits = {
        n: m.weight_quantizer.bits for n, m in qmodel.named_modules() if isinstance(m, QuantLayer)
    }
    assert bits["stem"] == 8 and bits["head"] == 8 and bits["res_a"] == 4


def test_save_and_load_round_trip_bit_exact(quantized, tmp_path):
    _, qmodel = quantized
    path = attnround_pl.save(qmodel, tmp_path / "q.pt")
    # made from an object: the file cannot rebuild UserCNN and says how to load it
    with pytest.raises(ModelLoadError, match=r"pass the float model.*model=UserCNN"):
        attnround_pl.load(path)
    reloaded = attnround_pl.load(path, model=UserCNN())
    x = _images(8, seed=2)
    assert torch.equal(reloaded(x), qmodel(x))


def test_tensor_source_with_labelled_eval_data_reports_top1():
    torch.manual_seed(0)
    model = UserCNN().eval()
    images = _images(32)
    labels = model(images).argmax(1)  # the float model is right on every one
    qmodel = attnround_pl.quantize(
        model,
        images,
        iters=0,
        calib_size=16,
        eval_data=[(images, labels)],
        progress=False,
        quant=attnround_pl.QuantConfig(w_bits=8, a_bits=8, rounding="nearest"),
    )
    report = qmodel.report
    assert report.calib_size == 16
    assert report.float_model.top1 == 100.0
    assert report.quantized.top1 > 80.0  # 8-bit nearest keeps nearly every prediction
    assert report.quantized.fidelity["output"].sqnr_db > 20.0


def test_zoo_model_saves_and_loads_without_the_object(tmp_path):
    from attnround_pl.models import build_model
    from attnround_pl.models.source import ModelSource

    torch.manual_seed(0)
    model = build_model("resnet20", weights=None)
    images = torch.randn(16, 1, 28, 28)
    qmodel = attnround_pl.quantize(
        model, images, iters=0, progress=False, source=ModelSource.zoo("resnet20")
    )
    reloaded = attnround_pl.load(attnround_pl.save(qmodel, tmp_path / "r20.pt"))
    assert torch.equal(reloaded(images[:4]), qmodel(images[:4]))


def test_bad_calls_fail_with_one_line():
    with pytest.raises(SettingError, match="must be a torch nn.Module or a zoo name, not int"):
        attnround_pl.quantize(42, _images())
    with pytest.raises(SettingError, match="give out_dir too"):
        attnround_pl.quantize(UserCNN(), _images(), name="x")


def test_import_is_light_and_exposes_the_api():
    import subprocess
    import sys

    code = (
        "import sys, attnround_pl; assert 'lightning' not in sys.modules; "
        "assert callable(attnround_pl.quantize); assert 'lightning' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, y):
        return self.conv(x) + y


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x), x


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            x = x + self.b(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "images", "message"),
    [
        (UserCNN(in_channels=3), torch.randn(8, 1, 16, 16), "to have 3 channels, but got 1"),
        (_TwoInputs(), torch.randn(8, 3, 8, 8), "cannot be called on one image batch"),
        (_TupleOut(), torch.randn(8, 3, 8, 8), "returned tuple"),
        (nn.Sequential(nn.ReLU()), torch.randn(8, 3, 8, 8), "no Conv"),
    ],
)
def test_bad_models_fail_with_one_line_and_write_nothing(tmp_path, model, images, message):
    with pytest.raises(InputError) as err:
        attnround_pl.quantize(model, images, iters=1, out_dir=tmp_path / "runs", progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_untraceable_model_falls_back_and_says_so():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="trac"):
        qmodel = attnround_pl.quantize(
            _Untraceable(), torch.randn(16, 3, 8, 8), iters=1, progress=False
        )
    rules = {u.rule for u in qmodel.report.units}
    assert rules and rules <= {"child", "layer"}
    assert set(qmodel.report.unit_rules) == rules


def test_unit_fidelity_falls_back_to_calibration_images_of_another_size():
    torch.manual_seed(0)
    model = UserCNN().eval()
    qmodel = attnround_pl.quantize(
        model, _images(16), iters=0, progress=False, eval_data=[torch.randn(8, 3, 20, 20)]
    )
    report = qmodel.report
    assert report.quantized.fidelity["output"].samples == 8  # the output: evaluation data
    assert report.unit_fidelity_data.startswith("calibration images (evaluation images")
    assert {u.fidelity.samples for u in report.unit_fidelity} == {16}


def test_progress_bars_follow_the_progress_argument(capsys):
    torch.manual_seed(0)
    attnround_pl.quantize(UserCNN().eval(), _images(16), iters=2, progress=False)
    assert "━" not in capsys.readouterr().out
    attnround_pl.quantize(UserCNN().eval(), _images(16), iters=2, progress=True)
    assert "━" in capsys.readouterr().out  # the reconstruction's progress bars


def test_mixed_precision_and_rounding_settings_from_python():
    """The allocation is a step before quantization: ``mixed`` beside ``quant``; the chosen
    rounding's own settings in ``rounding_args``."""
    torch.manual_seed(0)
    quant = attnround_pl.QuantConfig(rounding="adaround", rounding_args={"warmup": 0.5})
    qmodel = attnround_pl.quantize(UserCNN().eval(), _images(32), iters=2, progress=False,
                                   quant=quant, mixed=attnround_pl.MixedConfig(bit_list=[3, 5]))
    bits = {n: m.weight_quantizer.bits for n, m in qmodel.named_modules()
            if isinstance(m, QuantLayer)}
    assert qmodel.bit_allocation.layer_bits() == bits
    assert bits["stem"] == 8 and bits["head"] == 8 and set(bits.values()) <= {3, 5, 8}
    assert qmodel.report.mixed.bit_list == [3, 5]
    assert qmodel.report.quant["rounding_args"] == {
        "reg_weight": 0.01, "beta_start": 20.0, "beta_end": 2.0, "warmup": 0.5}


def test_block_placement_quantizes_each_block_input_once_and_reloads(tmp_path, capsys):
    from block_net import TwoBlocks

    from attnround_pl.quant import QuantConfig

    torch.manual_seed(0)
    model = TwoBlocks().eval()
    images = torch.randn(32, 3, 12, 12)
    quant = QuantConfig(w_bits=4, a_bits=4, act_placement="blocks")
    qmodel = attnround_pl.quantize(model, images, quant=quant, iters=3, progress=True)
    assert qmodel.block_inputs == {"layer.0": ["layer.0.conv1"],
                                   "layer.1": ["layer.1.conv1", "layer.1.downsample.0"]}
    block = qmodel.get_submodule("layer.1")
    assert block.input_quantizer.initialised and block.input_quantizer.bits == 4
    assert not block.conv1.input_quantizer.active
    assert qmodel.report.quant["act_placement"] == "blocks"
    path = attnround_pl.save(qmodel, tmp_path / "q.pt")
    reloaded = attnround_pl.load(path, model=TwoBlocks())
    x = torch.randn(4, 3, 12, 12)
    assert torch.equal(reloaded(x), qmodel(x))
    assert "regions of the traced graph" not in capsys.readouterr().out
    # a residual written in forward is a graph region: it keeps per-layer quantizers, said once
    attnround_pl.quantize(UserCNN().eval(), _images(16), quant=quant, iters=1, progress=True)
    assert "act_placement=blocks: 4 unit(s) are regions of the traced graph" in (
        capsys.readouterr().out)
