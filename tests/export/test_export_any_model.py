"""ONNX QDQ export of models beyond the classic CNN ops: torch.onnx translates the float ops,
the exporter adds the quantization; every export runs in onnxruntime beside PyTorch."""

import collections
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from onnx import numpy_helper
from torch import nn

from attnround_pl.export import (
    OnnxExportError,
    compare_with_onnx,
    export_onnx,
    first_code_divergence,
    onnx_session,
    to_onnx,
)
from attnround_pl.export.qdq_onnx import DOMAIN, onnx_name
from attnround_pl.quant import (
    ActQuantizer,
    QuantConfig,
    QuantLayer,
    calibrate_activations,
    freeze_model,
    quant_layers,
    quantize_model,
)


class MixedNet(nn.Module):
    """SiLU stem, grouped dilated conv + ReLU + a BatchNorm that cannot fold, reflect-padded
    'same' depthwise conv + Hardswish, sigmoid squeeze-excitation, residual add, interpolation
    and Upsample joined by a concat, a Conv1d head and a Linear on a rank-3 input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                  nn.SiLU())
        self.conv = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(16)  # after a ReLU: stays a float BatchNorm
        self.dw = nn.Conv2d(16, 16, 3, padding="same", padding_mode="reflect", groups=16)
        self.hswish = nn.Hardswish()
        self.se_fc1 = nn.Linear(16, 4)
        self.se_fc2 = nn.Linear(4, 16)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.down = nn.Conv2d(32, 8, 3, stride=2, padding=1)
        self.head1d = nn.Conv1d(8, 8, 3, padding=1)
        self.tokens = nn.Linear(8, 6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.bn(self.relu(self.conv(x)))
        y = self.hswish(self.dw(y))
        s = torch.sigmoid(self.se_fc2(F.relu(self.se_fc1(y.mean((2, 3))))))
        y = y * s[:, :, None, None] + x
        u = F.interpolate(F.avg_pool2d(y, 2), scale_factor=2, mode="nearest")
        z = self.down(torch.cat([self.up(F.max_pool2d(y, 2)), u], 1))
        t = self.tokens(self.head1d(z.flatten(2)).transpose(1, 2))  # (N, 16, 6)
        return self.fc(t.mean(1))


class TinySeg(nn.Module):
    """A segmentation-style net returning {"out": per-pixel logits, "aux": auxiliary logits}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)
        self.aux = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        size = x.shape[-2:]
        out = F.interpolate(self.head(f), size=size, mode="bilinear", align_corners=False)
        return collections.OrderedDict(out=out, aux=self.aux(f))


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean((2, 3))


def _quantized(net: nn.Module, size: int = 16, border: str = "nearest") -> nn.Module:
    torch.manual_seed(0)
    config = QuantConfig(w_bits=4, a_bits=4, rounding="nearest", act_border=border)
    with warnings.catch_warnings():  # MixedNet's BatchNorm after a ReLU stays, by design
        warnings.filterwarnings("ignore", "BatchNorm layers not folded")
        qnet = quantize_model(net.eval(), config)
    calibrate_activations(qnet, [torch.randn(8, 3, size, size) for _ in range(2)])
    freeze_model(qnet)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # borders that matter: random non-zero (k, c)
        for m in qnet.modules():
            if isinstance(m, ActQuantizer) and m.border is not None:
                for p in (m.border.k, m.border.c):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return qnet


def _agree(qnet: nn.Module, path, x: torch.Tensor) -> dict[str, float]:
    """Max |PyTorch - onnxruntime| per output; a difference above 1e-4 must be a code flipped
    at a rounding tie (float noise), never an export fault."""
    with torch.no_grad():
        ref = qnet(x)
    ref = ref if isinstance(ref, dict) else {"logits": ref}
    session = onnx_session(path)
    got = dict(zip(ref, session.run(list(ref), {"input": x.numpy()}), strict=True))
    diffs = {k: float((ref[k] - torch.from_numpy(got[k])).abs().max()) for k in ref}
    for k in ref:
        assert got[k].shape == tuple(ref[k].shape)
    if max(diffs.values()) > 1e-4:
        div = first_code_divergence(qnet, path, x)
        assert div is not None and div.float_noise, (diffs, div)
    return diffs


def _graph(model: onnx.ModelProto):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    return inits, producer, consumers


@pytest.mark.parametrize("border", ["nearest", "aquant"])
def test_mixed_float_ops_export_and_agree_with_pytorch(tmp_path, border):
    qnet = _quantized(MixedNet(), border=border)
    assert isinstance(qnet.bn, nn.BatchNorm2d) and isinstance(qnet.head1d, QuantLayer)
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "mixed.onnx")
    x = 1.5 * torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    diffs = _agree(qnet, path, x)
    assert set(diffs) == {"logits"}
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    # the float ops torch.onnx translated, kept float
    assert {"Sigmoid", "BatchNormalization", "Resize", "Concat", "Pad"} <= ops
    assert "HardSwish" in ops or "HardSigmoid" in ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert [o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")] == []
    assert DOMAIN not in str(model.opset_import)
    # one activation Q/DQ pair and one weight DQ per quantized layer
    layers = quant_layers(qnet)
    kinds = [n.op_type for n in model.graph.node]
    assert kinds.count("QuantizeLinear") == len(layers)
    assert kinds.count("DequantizeLinear") == 2 * len(layers)
    dim = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == "input" and dim[0].dim_param == "batch"


def test_weights_activations_and_bias_follow_the_qdq_rules():
    qnet = _quantized(MixedNet())
    model = to_onnx(qnet, torch.zeros(2, 3, 16, 16), opset=18)  # the 8-bit containers
    inits, producer, consumers = _graph(model)
    nodes = {n.name: n for n in model.graph.node}
    for path, layer in quant_layers(qnet).items():
        p = onnx_name(path)
        # weights: integer codes (initializer) -> DequantizeLinear(axis 0) -> the float op
        wq = layer.weight_quantizer
        codes = inits[f"{p}_weight_codes"]
        assert codes.dtype == (np.int8 if wq.grid.signed else np.uint8)
        np.testing.assert_array_equal(codes, wq.codes.numpy())
        assert inits[f"{p}_weight_scale"].shape == (layer.layer.weight.shape[0],)
        dq = nodes[f"{p}_weight_dq"]
        assert dq.op_type == "DequantizeLinear" and list(dq.input)[0] == f"{p}_weight_codes"
        assert dq.attribute[0].name == "axis" and dq.attribute[0].i == 0
        assert {c.op_type for c in consumers[dq.output[0]]} <= {"Conv", "Gemm", "MatMul",
                                                                 "Transpose"}
        # activations: [Clip below 8 bits] -> QuantizeLinear -> DequantizeLinear, zero point 0
        aq = layer.input_quantizer
        q = nodes[f"{p}_a_quant"]
        assert [c.op_type for c in consumers[q.output[0]]] == ["DequantizeLinear"]
        step = float(aq.step.detach())
        np.testing.assert_allclose(inits[q.input[1]], step, rtol=1e-7)
        assert inits[q.input[2]] == 0
        assert inits[q.input[2]].dtype == (np.int8 if aq.grid.signed else np.uint8)
        clip = producer.get(q.input[0])
        if aq.bits < 8:
            assert clip.op_type == "Clip" and clip.name == f"{p}_a_clip"
            np.testing.assert_allclose(inits[clip.input[1]], aq.grid.qmin * step, rtol=1e-6)
            np.testing.assert_allclose(inits[clip.input[2]], aq.grid.qmax * step, rtol=1e-6)
        else:
            assert clip is None or clip.op_type != "Clip"
        # the float bias: its own Add after the Conv / Gemm / MatMul, never a Conv input
        add = nodes[f"{p}_add_bias"]
        assert add.op_type == "Add" and producer[add.input[0]].op_type in ("Conv", "Gemm",
                                                                           "MatMul")
        np.testing.assert_array_equal(inits[add.input[1]].ravel(),
                                      layer.layer.bias.detach().numpy())
    assert all(len(n.input) == 2 for n in model.graph.node if n.op_type == "Conv")
    bits = {path: layer.input_quantizer.bits for path, layer in quant_layers(qnet).items()}
    assert bits["stem.0"] == bits["fc"] == 8 and bits["conv"] == 4  # both branches checked
    assert not any(t.dtype == np.float32 and t.shape == tuple(qnet.conv.layer.weight.shape)
                   for t in inits.values())  # no float copy of a quantized weight


def test_dict_outputs_get_one_graph_output_per_key(tmp_path):
    qnet = _quantized(TinySeg())
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "seg.onnx")
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["out", "aux"]
    for out in model.graph.output:
        assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    diffs = _agree(qnet, path, x)
    assert set(diffs) == {"out", "aux"} and max(diffs.values()) < 1e-4
    # compare_with_onnx on bare image batches: every output compared, no top-1 without labels
    batches = [torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(i))
               for i in range(2)]
    cmp = compare_with_onnx(qnet, path, batches)
    assert cmp.images == 12 and set(cmp.max_abs_diff) == {"out", "aux"}
    assert cmp.torch_top1 is None and cmp.onnx_top1 is None and cmp.argmax_mismatch is None
    assert cmp.max_abs_logit_diff == max(cmp.max_abs_diff.values()) < 1e-4
    assert cmp.divergence is None or cmp.divergence.float_noise
    # labels do not make a dict of maps a classifier
    labelled = compare_with_onnx(qnet, path, [(b, torch.zeros(6, dtype=torch.long))
                                              for b in batches])
    assert labelled.torch_top1 is None and labelled.max_abs_diff == cmp.max_abs_diff


@pytest.mark.slow  # the default run exports lraspp in tests/models/test_any_model.py
def test_torchvision_lraspp_exports_with_its_dict_output(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None,
                                       weights_backbone=None, num_classes=3)
    for m in net.modules():  # fan-in init: activations keep their scale through 15 blocks
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    qnet = _quantized(net, size=64)
    path = export_onnx(qnet, torch.zeros(1, 3, 64, 64), tmp_path / "lraspp.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["out"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    diffs = _agree(qnet, path, x)
    with torch.no_grad():
        assert qnet(x)["out"].abs().max() > 1  # outputs of a real scale, not ~0
    assert set(diffs) == {"out"}


def test_compare_with_onnx_takes_bare_image_batches_of_a_classifier(tmp_path):
    qnet = _quantized(MixedNet())
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "mixed.onnx")
    batches = [torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(i))
               for i in range(2)]
    cmp = compare_with_onnx(qnet, path, batches)
    assert cmp.images == 20 and list(cmp.max_abs_diff) == ["logits"]
    assert cmp.torch_top1 is None and cmp.argmax_mismatch is None
    assert cmp.max_abs_logit_diff == cmp.max_abs_diff["logits"]
    assert cmp.max_abs_logit_diff < 1e-4 or cmp.divergence.float_noise
    labelled = compare_with_onnx(qnet, path, [(b, torch.arange(10) % 5) for b in batches])
    assert labelled.torch_top1 is not None and labelled.argmax_mismatch is not None
    assert labelled.max_abs_diff == cmp.max_abs_diff


def test_a_tuple_output_is_refused_in_one_line():
    qnet = _quantized(TupleNet())
    with pytest.raises(OnnxExportError, match="TupleNet returned a tuple") as err:
        to_onnx(qnet, torch.zeros(1, 3, 16, 16))
    assert "\n" not in str(err.value)


def test_export_leaves_the_model_as_it_was():
    qnet = _quantized(MixedNet())
    qnet.train()
    qnet.bn.eval()  # a mixed state, restored module by module
    modes = {name: m.training for name, m in qnet.named_modules()}
    x = torch.randn(4, 3, 16, 16)
    qnet.eval()
    with torch.no_grad():
        before = qnet(x)
    for name, m in qnet.named_modules():
        m.training = modes[name]
    to_onnx(qnet, torch.zeros(1, 3, 16, 16))
    assert {name: m.training for name, m in qnet.named_modules()} == modes
    assert not any("forward" in m.__dict__ for m in qnet.modules())
    with torch.no_grad():
        assert torch.equal(qnet.eval()(x), before)
    failing = _quantized(TupleNet()).train()
    with pytest.raises(OnnxExportError):  # and after a failed export
        to_onnx(failing, torch.zeros(1, 3, 16, 16))
    assert failing.training and not any("forward" in m.__dict__ for m in failing.modules())
