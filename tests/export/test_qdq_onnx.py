import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from small_qnet import small_qnet
from torch import nn

from attnround_pl.export import (
    INT4_OPSET,
    OPSET,
    OnnxExportError,
    container_bits,
    default_opset,
    export_onnx,
    first_code_divergence,
    onnx_session,
    onnx_size,
    to_onnx,
)
from attnround_pl.quant import (
    QuantConfig,
    calibrate_activations,
    freeze_model,
    quant_layers,
    quantize_model,
)


def _run(path, x: torch.Tensor) -> torch.Tensor:
    (out,) = onnx_session(path).run(None, {"input": x.numpy()})
    return torch.from_numpy(out)


@pytest.mark.parametrize("opset", [OPSET, INT4_OPSET])
@pytest.mark.parametrize("border", ["nearest", "aquant"])
def test_onnx_matches_pytorch_on_random_inputs(tmp_path, border, opset):
    qnet = small_qnet(border=border)
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx", opset=opset)
    gen = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(32, 3, 16, 16, generator=gen)  # scaled: many inputs saturate the grid
    with torch.no_grad():
        ref = qnet(x)
    got = _run(path, x)
    assert got.shape == ref.shape == (32, 5)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()
    assert torch.equal(got.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("opset", [OPSET, 20])
def test_graph_is_qdq_with_per_channel_integer_weights(tmp_path, opset):
    qnet = small_qnet(border="aquant")
    model = to_onnx(qnet, torch.zeros(1, 3, 16, 16), opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
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


@pytest.mark.parametrize(("opset", "code_type"),
                         [(OPSET, TensorProto.INT8), (INT4_OPSET, TensorProto.INT4)])
def test_symmetric_weights_export_as_signed_codes(tmp_path, opset, code_type):
    qnet = small_qnet(w_symmetric=True)
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx", opset=opset)
    inits = {t.name: t for t in onnx.load(path).graph.initializer}
    assert inits["conv_a_weight_codes"].data_type == code_type
    assert inits["conv_a_weight_zero_point"].data_type == code_type
    codes = numpy_helper.to_array(inits["conv_a_weight_codes"]).astype(np.int16)
    np.testing.assert_array_equal(codes, qnet.conv_a.weight_quantizer.codes.numpy())
    assert codes.min() < 0  # signed codes survive the 4-bit packing
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


# --- opset 21: INT4 / UINT4 containers ---------------------------------------------------------

_TYPE = {(8, False): TensorProto.UINT8, (8, True): TensorProto.INT8,
         (4, False): TensorProto.UINT4, (4, True): TensorProto.INT4}


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _ints(t: onnx.TensorProto) -> np.ndarray:
    """An integer initializer's values (a 4-bit one unpacked) as int16."""
    return numpy_helper.to_array(t).astype(np.int16)


def test_default_opset_is_21_when_a_grid_has_4_bits_or_fewer():
    assert default_opset(small_qnet()) == INT4_OPSET  # W4A4 inside, 8-bit first/last
    assert default_opset(small_qnet(w_bits=6, a_bits=4)) == INT4_OPSET  # a 4-bit activation
    assert default_opset(small_qnet(w_bits=3, a_bits=32)) == INT4_OPSET  # a 3-bit weight
    assert default_opset(small_qnet(w_bits=6, a_bits=32)) == OPSET  # float activations
    eight = small_qnet(w_bits=8, a_bits=8)
    assert default_opset(eight) == OPSET
    assert to_onnx(eight, torch.zeros(1, 3, 16, 16)).opset_import[0].version == OPSET
    assert [container_bits(b, INT4_OPSET) for b in (2, 3, 4, 5, 8)] == [4, 4, 4, 8, 8]
    assert [container_bits(b, OPSET) for b in (2, 4, 8)] == [8, 8, 8]


@pytest.mark.parametrize("opset", [13, 17, 22, 0, "21", 21.0, True])
def test_opsets_outside_18_to_21_are_refused_in_one_line(tmp_path, opset):
    with pytest.raises(OnnxExportError, match=rf"^opset={opset!r} is not one the ONNX export "
                                              r"writes: 18 \(.*\) to 21 \(INT4/UINT4") as err:
        export_onnx(small_qnet(), torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx", opset=opset)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_opset_21_graph_stores_four_bit_codes_and_activations():
    qnet = small_qnet()
    model = to_onnx(qnet, torch.zeros(1, 3, 16, 16))  # W4A4: the default opset is 21
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == INT4_OPSET
    inits = _initializers(model)
    for path, layer in quant_layers(qnet).items():
        p, wq = path.replace(".", "_"), layer.weight_quantizer
        codes, zero = inits[f"{p}_weight_codes"], inits[f"{p}_weight_zero_point"]
        kind = _TYPE[container_bits(wq.bits, INT4_OPSET), wq.grid.signed]
        assert codes.data_type == zero.data_type == kind
        np.testing.assert_array_equal(_ints(codes), wq.codes.numpy())
        np.testing.assert_array_equal(_ints(zero), wq.zero_point.flatten().numpy())
        if wq.bits <= 4:  # two codes a byte
            assert len(codes.raw_data) == math.ceil(wq.codes.numel() / 2)
    zero_types = {path: inits[f"{path.replace('.', '_')}_a_zero_point"].data_type
                  for path in quant_layers(qnet)}
    # 4-bit grids after a Relu: uint4, QuantizeLinear's saturation is the clamp (no Clip); the
    # one after the MaxPool stays uint8 with its Clip (see qdq_onnx._act_container)
    assert zero_types == {"stem.0": TensorProto.INT8, "conv_a": TensorProto.UINT4,
                          "conv_b": TensorProto.UINT4, "dw": TensorProto.UINT8,
                          "head.2": TensorProto.UINT8}
    assert "conv_a_a_min" not in inits and "conv_b_a_min" not in inits
    step = float(qnet.dw.input_quantizer.step.detach())
    np.testing.assert_allclose(numpy_helper.to_array(inits["dw_a_max"]), 15 * step, rtol=1e-6)


def test_opset_21_narrow_grids_sit_in_four_bit_weights_and_eight_bit_activations():
    qnet = small_qnet(w_bits=3, a_bits=3)
    inits = _initializers(to_onnx(qnet, torch.zeros(1, 3, 16, 16), opset=INT4_OPSET))
    codes = inits["conv_a_weight_codes"]
    assert codes.data_type == TensorProto.UINT4  # a 3-bit weight grid in the 4-bit type
    assert _ints(codes).max() <= 7
    # a 3-bit activation grid needs the Clip to 0..7, which onnxruntime refuses before a
    # 4-bit QuantizeLinear: uint8 container, as at opset 18
    assert inits["conv_a_a_zero_point"].data_type == TensorProto.UINT8
    step = float(qnet.conv_a.input_quantizer.step.detach())
    np.testing.assert_allclose(numpy_helper.to_array(inits["conv_a_a_max"]), 7 * step, rtol=1e-6)


_CONFIGS = {
    "W4A4": {},
    "W4A4-aquant": {"border": "aquant"},
    "W2A4": {"w_bits": 2},
    "W3A3": {"w_bits": 3, "a_bits": 3},
    "mixed": {"layer_w_bits": {"conv_a": 2, "conv_b": 6, "dw": 3}, "last_layer_a_bits": 3},
    "W4A4-symmetric": {"w_symmetric": True},
    "W4A4-per-tensor": {"w_per_channel": False},  # scalar 4-bit zero points
}


@pytest.mark.parametrize("config", list(_CONFIGS.values()), ids=list(_CONFIGS))
def test_opset_21_agrees_with_pytorch_and_with_opset_18(tmp_path, config):
    qnet = small_qnet(**config)
    x = 2.0 * torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = qnet(x)
    outs = {}
    for opset in (OPSET, INT4_OPSET):
        path = export_onnx(qnet, x[:1], tmp_path / f"net{opset}.onnx", opset=opset)
        assert onnx.load(path).opset_import[0].version == opset
        outs[opset] = _run(path, x)
        if not torch.allclose(outs[opset], ref, atol=1e-4, rtol=1e-4):  # only a flipped tie
            div = first_code_divergence(qnet, path, x)
            assert div is not None and div.float_noise, (opset, div)
    assert torch.allclose(outs[INT4_OPSET], outs[OPSET], atol=1e-4, rtol=1e-4)
    assert torch.equal(outs[INT4_OPSET].argmax(1), ref.argmax(1))


class GuardedNet(nn.Module):
    """4-bit inputs after a ReLU6 (a Clip), a MaxPool, a MaxPool + Flatten, and two Relus."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.after_clip = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.after_pool = nn.Conv2d(8, 8, 3, padding=1)
        self.signed_after_relu = nn.Conv2d(8, 8, 1)
        self.after_relu = nn.Conv2d(8, 8, 1)
        self.head = nn.Sequential(nn.MaxPool2d(8), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.after_clip(self.relu6(self.stem(x)))))
        x = self.relu(self.signed_after_relu(self.relu(self.after_pool(x))))
        return self.head(self.relu(self.after_relu(x)))


def test_four_bit_activations_onnxruntime_breaks_keep_eight_bit_containers(tmp_path):
    torch.manual_seed(0)
    qnet = quantize_model(GuardedNet().eval(), QuantConfig(rounding="nearest",
                                                           last_layer_a_bits=4))
    calibrate_activations(qnet, [torch.randn(16, 3, 16, 16) for _ in range(2)])
    freeze_model(qnet)
    qnet.signed_after_relu.input_quantizer.signed = True  # int4 would lose the Relu in ORT
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx")
    inits = _initializers(onnx.load(path))
    zero_types = {path: inits[f"{path.replace('.', '_')}_a_zero_point"].data_type
                  for path in quant_layers(qnet)}
    assert zero_types == {
        "stem": TensorProto.INT8,  # the 8-bit network input
        "after_clip": TensorProto.UINT8,  # ReLU6 is a Clip: ClipQuantFusion throws on uint4
        "after_pool": TensorProto.UINT8,  # MaxPool left on uint4: INVALID_GRAPH
        "signed_after_relu": TensorProto.INT8,  # ReluQuantFusion would drop the Relu
        "after_relu": TensorProto.UINT4,
        "head.2": TensorProto.UINT8,  # MaxPool, then Flatten (a Reshape) only moves data
    }
    x = 2.0 * torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = qnet(x)
    got = _run(path, x)  # the default session (every graph optimization) loads it
    if not torch.allclose(got, ref, atol=1e-4, rtol=1e-4):
        div = first_code_divergence(qnet, path, x)
        assert div is not None and div.float_noise, div


def test_w4_weight_codes_take_half_the_bytes_of_opset_18(tmp_path):
    qnet = small_qnet(first_layer_w_bits=4, last_layer_w_bits=4)  # every weight grid 4-bit
    sizes = {opset: onnx_size(export_onnx(qnet, torch.zeros(1, 3, 16, 16),
                                          tmp_path / f"{opset}.onnx", opset=opset))
             for opset in (OPSET, INT4_OPSET)}
    counts = [m.weight_quantizer.codes.numel() for m in quant_layers(qnet).values()]
    eight, four = sizes[OPSET], sizes[INT4_OPSET]
    assert eight.weight_codes == four.weight_codes == sum(counts)
    assert eight.code_bytes_by_type == {"uint8": sum(counts)} and eight.bits_per_weight_code == 8
    assert four.code_bytes_by_type == {"uint4": sum(math.ceil(n / 2) for n in counts)}
    assert 0.5 <= four.weight_code_bytes / eight.weight_code_bytes < 0.51
    assert four.bits_per_weight_code == pytest.approx(4, abs=0.05)
    assert four.file_bytes < eight.file_bytes
    for opset, size in sizes.items():
        path = tmp_path / f"{opset}.onnx"
        assert size.file_bytes == path.stat().st_size
        assert size.other_bytes == size.file_bytes - size.weight_code_bytes > 0
        assert onnx_size(onnx.load(path)) == size  # a model in memory: the bytes it saves to
        assert size.as_dict()["other_bytes"] == size.other_bytes
