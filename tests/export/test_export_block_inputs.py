"""Models whose blocks quantize their inputs (``act_placement="blocks"``) in every file format:
the checkpoint, the state file and ONNX reproduce them exactly."""

import onnx
import pytest
import torch
from block_net import TwoBlocks, blocks_qnet

from attnround_pl.export import (
    compare_with_onnx,
    export_onnx,
    export_state,
    first_code_divergence,
    load_quantized,
    load_state,
    read_state,
    save_quantized,
)
from attnround_pl.export.qdq_onnx import onnx_name


@pytest.mark.parametrize("border", ["nearest", "aquant"])
def test_state_file_and_checkpoint_rebuild_the_block_quantizers(tmp_path, border):
    qnet, consumers = blocks_qnet(freeze=True, act_border=border)
    x = torch.randn(6, 3, 12, 12)
    state = export_state(qnet, tmp_path / "q.safetensors", qnet.quant_config, {})
    payload = read_state(state)
    assert set(payload["block_inputs"]) == {"layer.0", "layer.1"}
    assert payload["block_inputs"]["layer.1"]["consumers"] == consumers["layer.1"]
    assert payload["layers"]["layer.1.conv1"]["a_bits"] == 32  # reads the block's codes
    checkpoint = save_quantized(qnet, tmp_path / "q.pt", qnet.quant_config, {})
    for rebuilt, _ in (load_state(state, lambda meta: TwoBlocks()),
                       load_quantized(checkpoint, lambda meta: TwoBlocks())):
        assert rebuilt.block_inputs == consumers
        with torch.no_grad():
            assert torch.equal(rebuilt(x), qnet(x))


def test_onnx_quantizes_each_block_input_once_and_agrees(tmp_path):
    qnet, _ = blocks_qnet(freeze=True)
    x = torch.randn(16, 3, 12, 12)
    path = export_onnx(qnet, x[:1], tmp_path / "q.onnx")
    graph = onnx.load(str(path)).graph
    quants = {n.name for n in graph.node if n.op_type == "QuantizeLinear"}
    assert {onnx_name("layer.0.a_quant"), onnx_name("layer.1.a_quant")} <= quants
    assert onnx_name("layer.1.conv1.a_quant") not in quants  # its input is the block's
    assert onnx_name("layer.1.conv2.a_quant") in quants
    # the residual Add of block 0 takes the dequantized block input
    dequant = next(n for n in graph.node if n.name == onnx_name("layer.0.a_dequant")).output[0]
    block_out = [n for n in graph.node if n.op_type == "Add" and dequant in n.input]
    assert block_out, "the identity shortcut should read the block's quantized input"
    cmp = compare_with_onnx(qnet, path, [x])
    assert cmp.max_abs_logit_diff < 1e-5 or (cmp.divergence and cmp.divergence.float_noise)
    assert first_code_divergence(qnet, path, x) is None
