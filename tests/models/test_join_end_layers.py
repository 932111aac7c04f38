"""``recon.join_end_layers``: the stem's and the head's layers joined to the block next to them
(``models.units.join_end_layers``)."""

import pytest
import torch
from block_net import TwoBlocks
from torch import nn
from torchvision.models.resnet import BasicBlock

import attnround_pl
from attnround_pl.calib import build_unit_data
from attnround_pl.calib.cache import capture
from attnround_pl.calib.settings import ReconConfig
from attnround_pl.models import build_model, chain_blocks, join_end_layers, split_units
from attnround_pl.models.units import FLATTEN
from attnround_pl.quant import QuantConfig, calibrate_activations, quantize_model
from attnround_pl.quant.bn_fold import fold_batchnorms


def _qnet(net: nn.Module, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    qnet = quantize_model(net.eval(), QuantConfig(w_bits=4, a_bits=4))
    calibrate_activations(qnet, [x])
    return qnet.eval()


@pytest.mark.parametrize(("arch", "stem", "head", "count"), [
    ("resnet20", ("conv1", "bn1", "relu", "layer1.0"),
     ("layer3.2", "avgpool", FLATTEN, "fc"), 9),
    # the head's last conv is a layer unit too: both join the last block; the containers
    # (features.9, the stem's Sequential) are no links
    ("mobilenetv2", ("features.0.0", "features.0.1", "features.0.2", "features.1"),
     ("features.8", "features.9.0", "features.9.1", "features.9.2", "pool", FLATTEN,
      "classifier"), 8),
])
def test_the_embedded_models_stem_and_head_join_and_compute_what_the_model_does(arch, stem,
                                                                               head, count):
    x = torch.randn(4, 1, 28, 28)
    qnet = _qnet(build_model(arch, weights=None), x)
    units = split_units(qnet)
    joined = join_end_layers(units, qnet, x[:2])
    assert (len(units), len(joined)) == (11, count)
    first, last = joined[0], joined[-1]
    assert (first.chain, last.chain) == (stem, head)
    assert first.name == f"{stem[0]}..{stem[-1]}" and last.name == f"{head[0]}..{head[-1]}"
    assert (first.kind, first.rule, first.path, first.output_path) == (
        "joined", "registry", stem[0], stem[-1])
    assert first.layers[0] == stem[0] and last.layers[-1] == head[-1]
    with torch.no_grad():
        # the stem's unit: images in, its last block's output out; the head's: the logits
        assert torch.equal(first.module(qnet).eval()(x), capture(qnet, stem[-1], [x], "output"))
        head_in = capture(qnet, head[0], [x], "input")
        assert torch.equal(last.module(qnet).eval()(head_in), qnet(x))


def test_the_middle_units_and_chains_stay_and_a_chain_joins_too():
    x = torch.randn(4, 1, 28, 28)
    qnet = _qnet(build_model("resnet20", weights=None), x)
    units = split_units(qnet)
    joined = join_end_layers(units, qnet, x[:2])
    assert [u.name for u in joined[1:-1]] == [u.name for u in units[2:-2]]
    chained = join_end_layers(chain_blocks(units, qnet, 2, x[:2]), qnet, x[:2])
    assert [u.name for u in chained] == ["conv1..layer1.1", "layer1.2..layer2.0",
                                         "layer2.1..layer2.2", "layer3.0..layer3.1",
                                         "layer3.2..fc"]
    assert chained[0].chain == ("conv1", "bn1", "relu", "layer1.0", "layer1.1")


class FunctionalEnds(nn.Module):
    """A stem whose output is changed in place before the block, a head after a functional
    mean: neither joins."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = BasicBlock(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.block(self.stem(x).mul_(0.5)).mean((2, 3)))


def test_ends_joined_by_operations_outside_modules_stay_apart_with_a_warning():
    x = torch.randn(4, 3, 12, 12)
    qnet = _qnet(FunctionalEnds(), x)
    units = split_units(qnet)
    with pytest.warns(UserWarning, match="block cannot join stem") as caught:
        joined = join_end_layers(units, qnet, x[:2])
    assert any("fc cannot join block" in str(w.message) for w in caught)
    assert [u.name for u in joined] == ["stem", "block", "fc"]
    # TwoBlocks: the stem's ReLU is a module (joins), the head's mean is not (stays)
    qnet = _qnet(TwoBlocks(), x)
    with pytest.warns(UserWarning, match="fc cannot join layer.1"):
        joined = join_end_layers(split_units(qnet), qnet, x[:2])
    assert [u.name for u in joined] == ["stem.0..layer.0", "layer.1", "fc"]
    assert joined[0].chain == ("stem.0", "stem.1", "layer.0")


class PlainResidual(nn.Module):
    """No registered block: cut by the traced graph (a residual region between two layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.a(x)))
        return self.fc(x.mean((2, 3)))


def test_graph_units_join_as_one_region_of_the_traced_graph():
    x = torch.randn(4, 3, 12, 12)
    qnet = _qnet(PlainResidual(), x)
    units = split_units(qnet, x[:2])
    assert [u.kind for u in units] == ["layer", "region", "layer"]
    (joined,) = join_end_layers(units, qnet, x[:2])
    assert (joined.kind, joined.rule, joined.layers) == ("joined", "graph",
                                                         ["stem", "a", "b", "fc"])
    with torch.no_grad():
        assert torch.equal(joined.module(qnet)(x), qnet(x))
    # a chain of layers only (no larger unit): nothing joins
    plain = _qnet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), x)
    units = split_units(plain, x[:2])
    assert join_end_layers(units, plain, x[:2]) == units


def test_a_joined_unit_caches_the_images_and_the_float_logits():
    x = torch.randn(4, 1, 28, 28)
    net = build_model("resnet20", weights=None).eval()
    qnet = _qnet(net, x)
    joined = join_end_layers(split_units(qnet), qnet, x[:2])
    fold_batchnorms(net)
    stem = build_unit_data(qnet, net, joined[0], [x])
    assert torch.equal(stem.inputs, x)
    head = build_unit_data(qnet, net, joined[-1], [x])
    with torch.no_grad():
        assert torch.allclose(head.targets, net(x), atol=1e-5)


class SmallResNet(nn.Module):
    """ResNet's shape in small: a stem, two blocks, a pooling and a linear head, all modules."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.layer(self.stem(x))).flatten(1))


@pytest.mark.parametrize("options", [
    {}, {"quant": {"act_placement": "blocks"}, "block_output_steps": True},
])
def test_a_calibration_learns_the_joined_ends_as_units(options):
    torch.manual_seed(0)
    quant = QuantConfig(w_bits=4, a_bits=4, **options.pop("quant", {}))
    qmodel = attnround_pl.quantize(
        SmallResNet().eval(), torch.randn(16, 3, 12, 12), quant=quant,
        recon=ReconConfig(iters=3, unit_blocks=1, join_end_layers=True, **options),
        progress=False)
    names = [u.name for u in qmodel.report.units]
    assert names == ["stem.0..layer.0", "layer.1..fc"]
    assert qmodel.report.recon["join_end_layers"] is True
    assert all(u.learned and u.mse_final <= u.mse_nearest for u in qmodel.report.units)
    assert qmodel(torch.randn(2, 3, 12, 12)).shape == (2, 4)
