"""The TensorRT profile end to end on a small net: quantized with ``quant.profile: tensorrt``,
frozen and exported, the graph passes the structural TensorRT check and onnxruntime agrees
with PyTorch; the default profile's export and hand-broken graphs fail it, by rule."""

import numpy as np
import onnx
import pytest
import torch
from main_config import CONFIGS, MAIN
from onnx import TensorProto, helper, numpy_helper
from small_qnet import small_qnet

from attnround_pl import cli
from attnround_pl.export import (
    EXACT_INT8_OPTION,
    OPSET,
    compare_with_onnx,
    export_onnx,
    first_code_divergence,
    onnx_session,
)
from attnround_pl.export.tensorrt_check import TRT_MAX_OPSET, check_tensorrt_graph

TRT = {"w_bits": 8, "a_bits": 8, "profile": "tensorrt"}
EXAMPLE = torch.zeros(1, 3, 16, 16)


@pytest.fixture(scope="module")
def trt_export(tmp_path_factory):
    qnet = small_qnet(**TRT)
    path = export_onnx(qnet, EXAMPLE, tmp_path_factory.mktemp("trt") / "net.onnx")
    return qnet, path


def _copy(path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    inits = model.graph.initializer
    index = next(i for i, t in enumerate(inits) if t.name == name)
    inits[index].CopyFrom(numpy_helper.from_array(value, name))


def test_the_profile_s_export_passes_with_int8_zero_points_only(trt_export):
    _, path = trt_export
    model = _copy(path)
    check = check_tensorrt_graph(model)
    assert check.violations == () and check.passed
    assert check.opset == OPSET <= TRT_MAX_OPSET
    assert check.weighted_ops == check.quantized_ops == 5  # 4 Conv + 1 Gemm, all Q/DQ
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == 15
    for node in qdq:
        zero = inits[node.input[2]]
        assert zero.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero).any()
    # the residual add of SmallNet: its identity input has no Q/DQ (a warning, not a violation)
    assert check.counts("warnings") == {"residual_input": 1}
    assert "its residual input 'relu'" in check.warnings[0].message
    assert check.as_dict()["passed"] is True


def test_onnxruntime_agrees_with_pytorch_on_the_profile_s_export(trt_export):
    qnet, path = trt_export
    gen = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(64, 3, 16, 16, generator=gen)
    with torch.no_grad():
        y = qnet(x).argmax(1)
    cmp = compare_with_onnx(qnet, path, [(x, y)])
    assert cmp.argmax_mismatch == 0 and cmp.onnx_top1 == cmp.torch_top1 == 100.0
    assert cmp.max_abs_logit_diff < 1e-4
    assert first_code_divergence(qnet, path, x) is None  # every int8 code equal


def test_the_checking_session_multiplies_int8_exactly_and_can_be_left_at_the_defaults(trt_export):
    # without the option, an AVX2 host without VNNI saturates onnxruntime's int8 products: this
    # net's logits then differ from PyTorch's by about 0.2 (docs/export.md)
    _, path = trt_export
    options = onnx_session(path).get_session_options()
    assert options.get_session_config_entry(EXACT_INT8_OPTION) == "1"
    defaults = onnx_session(path, exact_int8=False).get_session_options()
    with pytest.raises(Exception, match="does not have configuration"):
        defaults.get_session_config_entry(EXACT_INT8_OPTION)


def test_the_default_profile_s_export_fails_on_uint8(tmp_path):
    qnet = small_qnet(w_bits=8, a_bits=8)  # asymmetric weights, uint8 after every ReLU
    check = check_tensorrt_graph(export_onnx(qnet, EXAMPLE, tmp_path / "net.onnx"))
    assert not check.passed
    counts = check.counts()
    assert set(counts) == {"zero_point_type", "code_type"}
    assert counts["code_type"] == 5  # every weight: uint8 codes
    assert any("zero point of type UINT8" in f.message for f in check.violations)


def test_a_4_bit_grid_in_int8_is_a_narrow_grid(tmp_path):
    qnet = small_qnet(w_symmetric=True)  # W4A4 inside, at opset 18: a Clip before 8-bit Q
    check = check_tensorrt_graph(export_onnx(qnet, EXAMPLE, tmp_path / "net.onnx", opset=18))
    assert "narrow_grid" in check.counts()
    assert any("codes in [0, 15] (a 4-bit grid in INT8)" in f.message for f in check.violations)


def _nonzero_zero_point(model):
    _set_init(model, "conv_a_a_zero_point", np.array(3, np.int8))


def _uint8_zero_point(model):
    _set_init(model, "conv_a_a_zero_point", np.array(0, np.uint8))


def _no_zero_point(model):
    q = _node(model, "conv_a_a_quant")
    del q.input[2]


def _conv_without_qdq(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv"
                and n.input[1] == "weight_dq_1")  # conv_a: its input quantizer bypassed
    conv.input[0] = _node(model, "conv_a_a_quant").input[0]


def _conv_reads_codes(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv"
                and n.input[1] == "weight_dq_1")
    conv.input[0] = _node(model, "conv_a_a_quant").output[0]


def _float_weight(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv"
                and n.input[1] == "weight_dq_1")
    model.graph.initializer.append(
        numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "float_w"))
    conv.input[1] = "float_w"


def _per_channel_activation(model):
    for name in ("conv_a_a_quant", "conv_a_a_dequant"):
        _node(model, name).attribute.append(helper.make_attribute("axis", 1))
    scale = numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == "conv_a_a_scale"))
    _set_init(model, "conv_a_a_scale", np.full(8, scale, np.float32))
    _set_init(model, "conv_a_a_zero_point", np.zeros(8, np.int8))


def _opset_21(model):
    model.opset_import[0].version = 21


BROKEN = {
    "nonzero zero point": (_nonzero_zero_point, "zero_point_nonzero"),
    "uint8 zero point": (_uint8_zero_point, "zero_point_type"),
    "no zero point": (_no_zero_point, "zero_point_missing"),
    "Conv without Q/DQ input": (_conv_without_qdq, "float_input"),
    "Conv reading int8 codes": (_conv_reads_codes, "quantized_reader"),
    "float weight": (_float_weight, "float_weight"),
    "per-channel activation": (_per_channel_activation, "activation_per_axis"),
    "opset 21": (_opset_21, "opset"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_hand_broken_graph_is_caught_by_its_rule(trt_export, case):
    break_it, rule = BROKEN[case]
    model = _copy(trt_export[1])
    break_it(model)
    check = check_tensorrt_graph(model)
    assert rule in check.counts(), check.violations
    assert not check.passed


def _matmul_graph(axis: int, scales: int) -> onnx.ModelProto:
    """x (Q/DQ) @ dequantized W (4 x 3, int8) with the weight's scale along ``axis``."""
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.ones((4, 3), np.int8), "w_codes"),
        numpy_helper.from_array(np.full(scales, 0.05, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(scales, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale", "w_zero"], ["w"],
                         name="w_dq", axis=axis),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_matmul_weights_go_per_output_channel():
    good = check_tensorrt_graph(_matmul_graph(axis=1, scales=3))  # N: the last axis of W
    assert good.passed and good.quantized_ops == 1 and good.warnings == ()
    bad = check_tensorrt_graph(_matmul_graph(axis=0, scales=4))
    assert bad.counts() == {"weight_axis": 1}
    assert "output channels are axis 1" in bad.violations[0].message


def test_the_command_line_takes_the_profile_and_its_precision_file(capsys, tmp_path):
    import yaml

    precision = str(CONFIGS / "precision" / "int8_tensorrt.yaml")
    with pytest.raises(SystemExit):
        cli.main(["calibrate", *MAIN, "--config", precision, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    quant = config["quant"]
    assert quant["profile"] == "tensorrt" and quant["w_bits"] == quant["a_bits"] == 8
    # Q/DQ at block inputs (identity shortcuts' Adds), learned in the peers' order
    assert quant["act_placement"] == "blocks" and config["recon"]["block_output_steps"] is True
    # the file rounds activations to nearest over the default recipe's learned border
    assert quant["act_border"] == "nearest"
    runs = tmp_path / "runs"
    assert cli.main(["calibrate", *MAIN, "--quant.profile", "tensorrt",
                     "--run.out_dir", str(runs)]) == 2
    assert not runs.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "w_bits=4 is not allowed with profile 'tensorrt'" in err[0]
    # at 8 bits without the file, the recipe's border is the one refusal, named in one line
    assert cli.main(["calibrate", *MAIN, "--quant.profile", "tensorrt", "--quant.w_bits", "8",
                     "--quant.a_bits", "8", "--run.out_dir", str(runs)]) == 2
    assert not runs.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "act_border='aquant' is not allowed with profile 'tensorrt'" in err[0]


def test_mixed_precision_is_refused_before_any_work():
    import attnround_pl
    from attnround_pl.quant import QuantConfig, QuantConfigError

    with pytest.raises(QuantConfigError, match=r"^mixed.bit_list=\[4, 8\] is not allowed with "):
        attnround_pl.quantize(torch.nn.Conv2d(3, 4, 3), torch.randn(4, 3, 8, 8),
                              quant=QuantConfig(**TRT), mixed={"bit_list": [4, 8]},
                              progress=False)
