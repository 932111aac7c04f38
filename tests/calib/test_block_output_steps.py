"""``recon.block_output_steps``: a block's input quantizer learned with the unit whose output it
quantizes (BRECQ's and QDrop's order), ``quant.placement.output_quantizers``."""

import lightning.pytorch as pl
import pytest
import torch
from block_net import TwoBlocks, blocks_qnet
from torch import nn

import attnround_pl
from attnround_pl.calib import build_unit_data
from attnround_pl.calib.reconstruction import BlockReconstruction
from attnround_pl.calib.settings import ReconConfig
from attnround_pl.errors import SettingError
from attnround_pl.quant import QuantConfig
from attnround_pl.quant.bn_fold import fold_batchnorms
from attnround_pl.quant.placement import WithOutputQuantizer, output_quantizers


def _units(qnet: nn.Module, *paths: str) -> list[nn.Module]:
    return [qnet.get_submodule(p) for p in paths]


def test_a_units_output_quantizer_is_the_next_blocks_input_quantizer():
    qnet, _ = blocks_qnet()
    q0, q1 = qnet.layer[0].input_quantizer, qnet.layer[1].input_quantizer
    found = output_quantizers(qnet, _units(qnet, "stem", "layer.0", "layer.1", "fc"),
                              torch.randn(2, 3, 12, 12))
    # the stem's ReLU output is layer.0's input; layer.1's output is pooled before the fc
    assert found[0] is q0 and found[1] is q1 and found[2] is None and found[3] is None
    # the conv alone: a (new) ReLU output follows it, not its own output; None is skipped
    assert output_quantizers(qnet, [qnet.stem[0], None], torch.randn(2, 3, 12, 12)) == [
        None, None]


def test_an_in_place_activation_after_the_unit_is_not_its_output():
    qnet, _ = blocks_qnet()
    qnet.stem[1] = nn.ReLU(inplace=True)  # returns the conv's output tensor, its values changed
    found = output_quantizers(qnet, [qnet.stem[0]], torch.randn(2, 3, 12, 12))
    assert found == [None]


def test_the_wrapped_unit_quantizes_its_output_and_shows_its_own_input_quantizer():
    qnet, _ = blocks_qnet()
    block, exit_q = qnet.layer[0], qnet.layer[1].input_quantizer
    wrapped = WithOutputQuantizer(block, exit_q)
    x = torch.randn(2, 8, 12, 12)
    assert torch.equal(wrapped(x), exit_q(block(x)))
    assert not torch.equal(wrapped(x), block(x))  # 4-bit steps: the output moved
    assert wrapped.input_quantizer is block.input_quantizer
    assert WithOutputQuantizer(qnet.fc, exit_q).input_quantizer is qnet.fc.input_quantizer
    assert WithOutputQuantizer(nn.Identity(), exit_q).input_quantizer is None
    assert exit_q.step in set(wrapped.parameters())


def test_fixed_steps_are_not_learned_and_the_output_step_is():
    qnet, _ = blocks_qnet()  # round-to-nearest: the steps are what learns
    torch.manual_seed(0)  # the float net blocks_qnet quantized
    folded = TwoBlocks().eval()
    fold_batchnorms(folded)
    images = [torch.randn(16, 3, 12, 12)]
    data = build_unit_data(qnet, folded, "layer.0", images)
    own, exit_q = qnet.layer[0].input_quantizer, qnet.layer[1].input_quantizer
    module = BlockReconstruction(WithOutputQuantizer(qnet.layer[0], exit_q), data, "layer.0",
                                 iters=4, batch_size=8, fixed_steps=[own])
    _, steps = module.learnable()
    assert exit_q.step in steps and own.step not in steps
    before = (own.step.detach().clone(), exit_q.step.detach().clone())
    pl.Trainer(max_steps=4, max_epochs=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
               devices=1).fit(module)
    assert torch.equal(own.step, before[0])
    assert not torch.equal(exit_q.step, before[1])


def _quantize(block_output_steps: bool) -> nn.Module:
    torch.manual_seed(0)
    net = TwoBlocks().eval()
    return attnround_pl.quantize(
        net, torch.randn(16, 3, 12, 12), quant=QuantConfig(w_bits=4, a_bits=4,
                                                           act_placement="blocks"),
        recon=ReconConfig(iters=3, block_output_steps=block_output_steps, unit_blocks=1,
                          join_end_layers=False), progress=False)  # each block a unit


def test_a_calibration_learns_each_output_quantizer_with_the_unit_before():
    plain, ordered = _quantize(False), _quantize(True)
    assert ordered.report.recon["block_output_steps"] is True
    by_name = {u.name: u for u in ordered.report.units}
    plain_units = {u.name: u for u in plain.report.units}
    # layer.0's error is measured after layer.1's input quantizer: not the plain unit's error
    assert by_name["layer.0"].mse_nearest != pytest.approx(plain_units["layer.0"].mse_nearest)
    # the first unit (the stem's conv, a ReLU after it) has none: the same error and inputs
    first = ordered.report.units[0].name
    assert by_name[first].mse_nearest == pytest.approx(plain_units[first].mse_nearest)
    assert [u.name for u in ordered.report.units] == [u.name for u in plain.report.units]


def test_block_output_steps_need_the_blocks_placement():
    with pytest.raises(SettingError, match="recon.block_output_steps .* needs "
                                           "quant.act_placement=blocks, not 'layers'"):
        attnround_pl.quantize(TwoBlocks().eval(), torch.randn(8, 3, 12, 12),
                              recon=ReconConfig(iters=1, block_output_steps=True),
                              progress=False)


def test_with_aquant_borders_each_border_learns_with_its_quantizers_unit():
    qnet, _ = blocks_qnet(act_border="aquant")
    torch.manual_seed(0)
    folded = TwoBlocks().eval()
    fold_batchnorms(folded)
    data = build_unit_data(qnet, folded, "layer.0", [torch.randn(16, 3, 12, 12)])
    own, exit_q = qnet.layer[0].input_quantizer, qnet.layer[1].input_quantizer
    own_border, exit_border = set(own.border.parameters()), set(exit_q.border.parameters())
    assert own_border and exit_border
    module = BlockReconstruction(WithOutputQuantizer(qnet.layer[0], exit_q), data, "layer.0",
                                 iters=2, batch_size=8, fixed_steps=[own])
    learned = {id(p) for p in module.learnable()[1]}
    assert {id(p) for p in exit_border} <= learned and not {id(p) for p in own_border} & learned
    assert id(exit_q.step) in learned and id(own.step) not in learned
