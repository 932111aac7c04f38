import copy

import pytest
import torch
from block_net import blocks_qnet

from attnround_pl.quant import QuantConfig, quant_layers
from attnround_pl.quant.errors import QuantConfigError
from attnround_pl.quant.placement import (
    block_input_quantizers,
    check_placement,
    place_block_inputs,
)


def _blocks_model(seed=0):
    return blocks_qnet(seed)


def test_consumers_are_the_layers_reading_the_block_input_itself():
    qnet, consumers = _blocks_model()
    assert consumers == {"layer.0": ["layer.0.conv1"],
                         "layer.1": ["layer.1.conv1", "layer.1.downsample.0"]}
    assert qnet.block_inputs == consumers
    layers = quant_layers(qnet)
    for names in consumers.values():
        assert all(not layers[n].input_quantizer.active for n in names)
    assert layers["layer.0.conv2"].input_quantizer.active  # inside a block: its own
    assert set(block_input_quantizers(qnet)) == {"layer.0", "layer.1"}


def test_the_identity_shortcut_carries_the_quantized_input():
    qnet, _ = _blocks_model()
    block = qnet.get_submodule("layer.0")
    quantizer = block.input_quantizer
    assert quantizer.initialised and quantizer.bits == 4
    x = torch.randn(2, 8, 6, 6).relu()
    seen = {}
    handle = block.conv1.register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0]))
    with torch.no_grad():
        out = block(x)
    handle.remove()
    q = quantizer(x)
    assert torch.equal(seen["in"], q)
    step = float(quantizer.step.detach())
    assert torch.allclose(q / step, (q / step).round(), atol=1e-5)  # on the 4-bit grid
    # the residual adds q (not x): recompute the block by hand from the quantized input
    with torch.no_grad():
        ref = block.relu(block.conv2(block.relu(block.conv1(q))) + q)
    assert torch.equal(out, ref)


def test_the_block_quantizer_learns_and_the_model_deep_copies():
    qnet, _ = _blocks_model()
    block = qnet.get_submodule("layer.1")
    x = torch.randn(2, 8, 6, 6).relu()
    block(x).square().sum().backward()
    assert block.input_quantizer.step.grad is not None
    twin = copy.deepcopy(qnet)
    with torch.no_grad():
        twin.get_submodule("layer.1").input_quantizer.step.mul_(2)
        a, b = qnet(torch.randn(2, 3, 12, 12)), twin(torch.randn(2, 3, 12, 12))
    assert not torch.equal(a, b)  # the copy's hook uses the copy's own quantizer
    assert twin.block_inputs == qnet.block_inputs


def test_unknown_placement_and_placing_twice_are_refused():
    with pytest.raises(QuantConfigError, match="unknown act_placement 'outputs'"):
        check_placement("outputs")
    with pytest.raises(QuantConfigError, match="unknown act_placement"):
        QuantConfig(act_placement="output").validate()
    qnet, consumers = _blocks_model()
    with pytest.raises(QuantConfigError, match="already quantizes its input"):
        place_block_inputs(qnet, consumers)
