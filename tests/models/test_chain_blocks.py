"""``recon.unit_blocks``: consecutive blocks joined into one reconstruction unit
(``models.units.chain_blocks``)."""

import pytest
import torch
from block_net import TwoBlocks
from torch import nn
from torchvision.models.resnet import BasicBlock

import attnround_pl
from attnround_pl.calib import build_unit_data
from attnround_pl.calib.settings import ReconConfig
from attnround_pl.errors import SettingError
from attnround_pl.models import chain_blocks, split_units
from attnround_pl.quant import QuantConfig, calibrate_activations, quantize_model
from attnround_pl.quant.bn_fold import fold_batchnorms

X = torch.randn(4, 3, 12, 12)


class ThreeBlocks(nn.Module):
    """Three blocks in a row, then a fourth after an in-place op and a fifth after a pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 8))
        self.b = BasicBlock(8, 8)
        self.c = BasicBlock(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.a(self.stem(x))
        x = self.b(x.mul_(0.5))  # in place: a.2's output tensor, its values changed
        x = self.c(nn.functional.max_pool2d(x, 1))
        return self.fc(x.mean((2, 3)))


class TwoStages(nn.Module):
    """Two stages of blocks, each block fed by the one before: three, then two."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.s1 = nn.Sequential(*[BasicBlock(8, 8) for _ in range(3)])
        self.s2 = nn.Sequential(*[BasicBlock(8, 8) for _ in range(2)])
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.s2(self.s1(self.stem(x))).mean((2, 3)))


def _qnet(net: nn.Module, **quant) -> nn.Module:
    torch.manual_seed(0)
    qnet = quantize_model(net.eval(), QuantConfig(w_bits=4, a_bits=4, **quant))
    calibrate_activations(qnet, [X])
    return qnet


def test_consecutive_blocks_join_up_to_the_size_and_only_where_one_feeds_the_next():
    torch.manual_seed(0)
    qnet = _qnet(ThreeBlocks())
    units = split_units(qnet, X)
    assert [u.name for u in units] == ["stem", "a.0", "a.1", "a.2", "b", "c", "fc"]
    chained = chain_blocks(units, qnet, 2, X)
    assert [u.name for u in chained] == ["stem", "a.0..a.1", "a.2", "b", "c", "fc"]
    pair = chained[1]
    assert (pair.path, pair.chain, pair.kind, pair.rule) == ("a.0", ("a.0", "a.1"), "blocks",
                                                             "registry")
    assert pair.layers == units[1].layers + units[2].layers and pair.output_path == "a.1"
    # 3: a.0..a.2 in one unit; the in-place op and the pool keep b and c apart
    assert [u.name for u in chain_blocks(units, qnet, 3, X)] == ["stem", "a.0..a.2", "b", "c",
                                                                 "fc"]
    assert chain_blocks(units, qnet, 1, X) == units
    with pytest.raises(ValueError, match="size=0"):
        chain_blocks(units, qnet, 0, X)


def test_in_stage_chains_end_where_the_next_block_has_another_parent():
    torch.manual_seed(0)
    qnet = _qnet(TwoStages())
    units = split_units(qnet, X)
    across = chain_blocks(units, qnet, 2, X)
    assert [u.name for u in across] == ["stem", "s1.0..s1.1", "s1.2..s2.0", "s2.1", "fc"]
    inside = chain_blocks(units, qnet, 2, X, in_stage=True)
    assert [u.name for u in inside] == ["stem", "s1.0..s1.1", "s1.2", "s2.0..s2.1", "fc"]
    assert inside[3].chain == ("s2.0", "s2.1") and inside[2].chain == ()
    # a size that spans both stages still stops at the stage's end
    assert [u.name for u in chain_blocks(units, qnet, 5, X, in_stage=True)] == [
        "stem", "s1.0..s1.2", "s2.0..s2.1", "fc"]


def test_a_chain_computes_its_blocks_in_turn_and_caches_the_last_ones_float_output():
    torch.manual_seed(0)
    net = TwoBlocks().eval()
    qnet = _qnet(net)
    (stem, pair, fc) = chain_blocks(split_units(qnet, X), qnet, 2, X)
    assert pair.name == "layer.0..layer.1" and stem.chain == () and fc.chain == ()
    h = torch.randn(2, 8, 12, 12)
    assert torch.equal(pair.module(qnet)(h), qnet.layer[1](qnet.layer[0](h)))
    assert [id(m) for m in pair.submodules(qnet)] == [id(qnet.layer[0]), id(qnet.layer[1])]
    folded = net
    fold_batchnorms(folded)
    data = build_unit_data(qnet, folded, pair, [X])
    with torch.no_grad():
        stem_out = qnet.stem(X)
        assert torch.equal(data.inputs, stem_out)
        assert torch.allclose(data.targets, folded.layer(folded.stem(X)))


def _quantize(unit_blocks: int, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return attnround_pl.quantize(
        TwoBlocks().eval(), torch.randn(16, 3, 12, 12),
        quant=QuantConfig(w_bits=4, a_bits=4, **kwargs.pop("quant", {})),
        recon=ReconConfig(iters=3, unit_blocks=unit_blocks, join_end_layers=False, **kwargs),
        progress=False)


def test_a_calibration_reconstructs_the_chain_as_one_unit():
    one, two = _quantize(1), _quantize(2)
    assert [u.name for u in one.report.units][1:3] == ["layer.0", "layer.1"]
    by_name = {u.name: u for u in two.report.units}
    assert len(two.report.units) == len(one.report.units) - 1
    assert by_name["layer.0..layer.1"].kind == "blocks" and by_name["layer.0..layer.1"].learned
    assert two.report.recon["unit_blocks"] == 2
    # the chain's error is at layer.1's output: layer.0's rounding learned against it
    assert by_name["layer.0..layer.1"].mse_final <= by_name["layer.0..layer.1"].mse_nearest
    x = torch.randn(3, 3, 12, 12)
    assert two(x).shape == (3, 4) and not torch.equal(two(x), one(x))


@pytest.mark.parametrize("options", [
    {"quant": {"act_placement": "blocks"}, "block_output_steps": True},
    {"loss": "fisher_damped"},
])
def test_chains_work_with_the_block_placement_and_fishers_loss(options):
    two = _quantize(2, **options)
    assert [u.name for u in two.report.units][1] == "layer.0..layer.1"
    assert all(u.mse_final <= u.mse_nearest for u in two.report.units)


def test_a_calibration_keeps_in_stage_chains_inside_their_stage():
    torch.manual_seed(0)
    qmodel = attnround_pl.quantize(
        TwoStages().eval(), torch.randn(16, 3, 12, 12), quant=QuantConfig(w_bits=4, a_bits=4),
        recon=ReconConfig(iters=3, unit_blocks=2, unit_blocks_in_stage=True,
                          join_end_layers=False), progress=False)
    assert [u.name for u in qmodel.report.units] == ["stem", "s1.0..s1.1", "s1.2",
                                                     "s2.0..s2.1", "fc"]
    assert qmodel.report.recon["unit_blocks_in_stage"] is True
    assert all(u.learned and u.mse_final <= u.mse_nearest for u in qmodel.report.units)


def test_unit_blocks_below_one_is_refused():
    with pytest.raises(SettingError, match="recon.unit_blocks=0 must be >= 1"):
        ReconConfig(unit_blocks=0).validate()
    with pytest.raises(SettingError, match="unit_blocks_in_stage=true needs recon.unit_blocks"):
        ReconConfig(unit_blocks=1, unit_blocks_in_stage=True).validate()
