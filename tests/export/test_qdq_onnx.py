import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from small_qnet import small_qnet
from torch import nn

from attnround_pl.export import OPSET, OnnxExportError, export_onnx, onnx_session, to_onnx
from attnround_pl.quant import QuantConfig, quant_layers, quantize_model


def _run(path, x: torch.Tensor) -> torch.Tensor:
    (out,) = onnx_session(path).run(None, {"input": x.numpy()})
    return torch.from_numpy(out)


@pytest.mark.parametrize("border", ["nearest", "aquant"])
def test_onnx_matches_pytorch_on_random_inputs(tmp_path, border):
    qnet = small_qnet(border=border)
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx")
    gen = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(32, 3, 16, 16, generator=gen)  # scaled: many inputs saturate the grid
    with torch.no_grad():
        ref = qnet(x)
    got = _run(path, x)
    assert got.shape == ref.shape == (32, 5)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()
    assert torch.equal(got.argmax(1), ref.argmax(1))


def test_graph_is_qdq_with_per_channel_integer_weights(tmp_path):
    qnet = small_qnet(border="aquant")
    model = to_onnx(qnet, torch.zeros(1, 3, 16, 16))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET >= 13
    ops = [n.op_type for n in model.graph.node]
    layers = quant_layers(qnet)
    # one weight DQ per layer, one Q/DQ pair per quantized input
    assert ops.count("QuantizeLinear") == len(layers)
    assert ops.count("DequantizeLinear") == 2 * len(layers)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {n.output[0]: n for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):  # every weight is integer codes, dequantized
            dq = producer[node.input[1]]
            assert dq.op_type == "DequantizeLinear"
            assert inits[dq.input[0]].dtype in (np.uint8, np.int8)
    codes = inits["conv_a_weight_codes"]
    wq = layers["conv_a"].weight_quantizer
    assert codes.dtype == np.uint8 and codes.max() <= 15
    np.testing.assert_array_equal(codes, wq.codes.numpy())
    assert inits["conv_a_weight_scale"].shape == (8,)
    dq = next(n for n in model.graph.node if n.input[0] == "conv_a_weight_codes")
    assert dq.op_type == "DequantizeLinear" and dq.attribute[0].i == 0  # axis 0
    # a 4-bit unsigned input: Clip to [0, 15 s] before the 8-bit Q; the border's affine after it
    step = float(layers["conv_a"].input_quantizer.step.detach())
    np.testing.assert_allclose(inits["conv_a_a_max"], 15 * step, rtol=1e-6)
    assert inits["conv_a_a_min"] == 0
    k = layers["conv_a"].input_quantizer.border.effective()[0]
    np.testing.assert_allclose(inits["conv_a_border_slope"].ravel(), (1 - k).detach().numpy())


def test_eight_bit_layers_have_no_clip_and_signed_input_is_int8():
    qnet = small_qnet()
    model = to_onnx(qnet, torch.zeros(1, 3, 16, 16))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert "stem_0_a_min" not in inits  # the 8-bit input: QuantizeLinear's saturation clamps
    assert inits["stem_0_a_zero_point"].dtype == np.int8  # the network input is signed


def test_symmetric_weights_export_as_int8(tmp_path):
    qnet = small_qnet(w_symmetric=True)
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert inits["conv_a_weight_codes"].dtype == np.int8
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(_run(path, x), qnet(x), atol=1e-4, rtol=1e-4)


class CumMax(nn.Module):
    """An op torch.onnx has no translation for (aten.cummax)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, 1)[0]


def test_unsupported_op_is_named_and_earlier_file_kept(tmp_path):
    qnet = small_qnet()
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx")
    before = path.read_bytes()
    qnet.relu6 = CumMax()
    with pytest.raises(OnnxExportError, match=r"op 'aten\.cummax\.default' of SmallNet") as err:
        export_onnx(qnet, torch.zeros(1, 3, 16, 16), path)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no partial file left
    assert not any("forward" in m.__dict__ for m in qnet.modules())  # forwards restored


def test_float_ops_the_old_exporter_refused_now_export(tmp_path):
    qnet = small_qnet()
    qnet.relu6 = nn.SiLU()
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx")
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = qnet(x)
    assert torch.allclose(_run(path, x), ref, atol=1e-4, rtol=1e-4)
    assert "Sigmoid" in {n.op_type for n in onnx.load(path).graph.node}  # SiLU = x * sigmoid(x)


def test_unfrozen_model_is_refused():
    torch.manual_seed(0)
    qnet = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14,
                          2)), QuantConfig(a_bits=32, first_layer_a_bits=32,
                                           last_layer_a_bits=32))
    with pytest.raises(OnnxExportError, match="not frozen"):
        to_onnx(qnet, torch.zeros(1, 3, 16, 16))
