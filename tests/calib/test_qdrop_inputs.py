"""QDrop's mixing of a unit's input with the float model's (``quant.drop.float_inputs``)."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from block_net import TwoBlocks, blocks_qnet

import attnround_pl
from attnround_pl.calib import build_unit_data
from attnround_pl.calib.reconstruction import BlockReconstruction
from attnround_pl.quant import ActQuantizer, QuantConfig, quantize_model
from attnround_pl.quant.act_quant import DropSettings, drop_references
from attnround_pl.quant.bn_fold import fold_batchnorms
from attnround_pl.quant.errors import QuantConfigError
from attnround_pl.quant.model import calibrate_activations
from attnround_pl.quant.placement import entry_quantizers


def test_dropped_elements_take_the_reference_and_the_rest_are_quantized():
    q = ActQuantizer(4, signed=True, drop_prob=0.5)
    q.start_observing()
    q(torch.randn(1000))
    q.finish_observing()
    x, ref = torch.randn(4000), torch.full((4000,), 123.0)
    q.dropping = True
    with drop_references([q], ref):
        out = q(x)
    assert q.drop_reference is None  # cleared after
    dropped = out == 123.0
    assert 0.4 < dropped.float().mean() < 0.6
    q.dropping = False
    assert torch.equal(out[~dropped], q(x)[~dropped])
    with pytest.raises(RuntimeError, match="drop reference of shape"):
        q.dropping = True
        with drop_references([q], ref[:10]):
            q(x)


def test_entry_quantizers_are_those_that_quantize_the_unit_input_itself():
    qnet = quantize_model(TwoBlocks().eval(), QuantConfig(rounding="nearest"))
    calibrate_activations(qnet, [torch.randn(8, 3, 12, 12)])
    block = qnet.get_submodule("layer.1")
    entries = entry_quantizers(block, torch.randn(2, 8, 12, 12))
    assert entries == [block.conv1.input_quantizer, block.downsample[0].input_quantizer]
    assert entry_quantizers(qnet.fc, torch.randn(2, 16)) == [qnet.fc.input_quantizer]
    placed, _ = blocks_qnet()
    block = placed.get_submodule("layer.1")
    assert entry_quantizers(block, torch.randn(2, 8, 12, 12)) == [block.input_quantizer]


def test_float_inputs_need_dropping():
    with pytest.raises(QuantConfigError, match=r"quant.drop.float_inputs needs quant.drop.prob"):
        DropSettings(prob=0.0, float_inputs=True).validate()
    with pytest.raises(QuantConfigError, match="float_inputs='yes' must be true or false"):
        DropSettings(prob=0.5, float_inputs="yes").validate()


def _fit_one_unit(float_inputs: bool):
    torch.manual_seed(0)
    net = TwoBlocks().eval()
    config = QuantConfig(rounding="attention", drop={"prob": 0.5, "float_inputs": float_inputs})
    qnet = quantize_model(net, config)
    images = [torch.randn(16, 3, 12, 12)]
    calibrate_activations(qnet, images)
    folded = copy.deepcopy(net)
    fold_batchnorms(folded)
    data = build_unit_data(qnet, folded, "layer.1", images, float_inputs=float_inputs)
    module = BlockReconstruction(qnet.get_submodule("layer.1"), data, "layer.1", iters=4,
                                 batch_size=8)
    pl.Trainer(max_steps=4, max_epochs=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
               devices=1).fit(module)
    rounding, _ = module.learnable()
    return data, [p.detach().clone() for p in rounding]



def test_the_float_inputs_are_cached_and_change_what_the_unit_learns():
    data, learned = _fit_one_unit(True)
    assert data.float_inputs is not None and data.float_inputs.shape == data.inputs.shape
    assert not torch.equal(data.float_inputs, data.inputs)  # the quantized stem differs
    plain, learned_plain = _fit_one_unit(False)
    assert plain.float_inputs is None
    assert any(not torch.equal(a, b) for a, b in zip(learned, learned_plain, strict=True))


def test_a_calibration_with_float_inputs_runs_end_to_end():
    torch.manual_seed(0)
    quant = QuantConfig(w_bits=4, a_bits=4, drop={"prob": 0.5, "float_inputs": True},
                        act_placement="blocks")
    qmodel = attnround_pl.quantize(TwoBlocks().eval(), torch.randn(16, 3, 12, 12), quant=quant,
                                   iters=3, progress=False)
    assert qmodel.report.quant["drop"] == {"prob": 0.5, "float_inputs": True}
    assert all(not q.dropping and q.drop_reference is None
               for q in qmodel.modules() if isinstance(q, ActQuantizer))
