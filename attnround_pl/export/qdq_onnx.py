"""ONNX export of a frozen quantized model as a QuantizeLinear/DequantizeLinear (QDQ) graph.

The model is traced with ``torch.fx`` (quantized layers kept whole) and each node is written as
ONNX ops, opset 13:

- weights: integer codes stored as uint8/int8 initializers (asymmetric / symmetric grid), then
  ``DequantizeLinear`` with per-output-channel scale and zero point (``axis=0``);
- activation quantizers: ``Clip(x, qmin*s, qmax*s)`` -> ``QuantizeLinear(s, 0)`` ->
  ``DequantizeLinear(s, 0)``. ONNX's integer types are 8-bit; a b-bit grid (b < 8) is the same
  8-bit type with the float ``Clip`` limiting the codes to ``[qmin, qmax]`` of the b-bit grid
  (e.g. 0..15 for unsigned 4 bits). At 8 bits the Clip is left out: QuantizeLinear's own
  saturation is the same clamp;
- an AQuant border (see ``quant.act_border``) becomes the per-channel affine of its folded form
  ``round((1 - k) x~ - c)`` between the Clip and QuantizeLinear: ``y = x (1 - k) - c s``;
  QuantizeLinear's round-half-to-even is the rounding of the folded form.

Float bias, ReLU/ReLU6, pooling, flatten and residual adds are plain ONNX ops.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from ..atomic import write_atomically
from ..errors import InputError
from ..quant import ActQuantizer, QuantLayer, QuantLinear

OPSET = 13
IR_VERSION = 8  # opset 13's IR version; what every onnxruntime since 1.8 reads
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxExportError(InputError, RuntimeError):
    """The model holds something the QDQ exporter cannot write."""


class _QuantLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QuantLayer) or super().is_leaf_module(m, qualname)


def _array(t: Tensor | float | list, dtype: np.dtype = np.float32) -> np.ndarray:
    if isinstance(t, Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=dtype)


def onnx_name(hint: str) -> str:
    """The graph name of a node or initializer named after ``hint`` (a module path and suffix,
    e.g. ``layer1.0.conv1.a_quant``); a repeated hint gets ``_1``, ``_2``, ... after it."""
    return hint.replace(".", "_") or "t"


class _Graph:
    """Collects ONNX nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def name(self, hint: str) -> str:
        base = onnx_name(hint)
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _act_qdq(g: _Graph, x: str, aq: ActQuantizer, prefix: str, rank: int) -> str:
    """Q/DQ pair of one activation quantizer (with the folded AQuant border if it has one)."""
    if not aq.active or not aq.enabled:
        return x
    grid, step = aq.grid, float(aq.step.detach())
    int_type = np.int8 if grid.signed else np.uint8
    scale = g.const(f"{prefix}.a_scale", _array(step))
    zero = g.const(f"{prefix}.a_zero_point", np.zeros((), dtype=int_type))
    y = x
    if grid.bits < 8 or aq.border is not None:
        lo = g.const(f"{prefix}.a_min", _array(grid.qmin * step))
        hi = g.const(f"{prefix}.a_max", _array(grid.qmax * step))
        y = g.op("Clip", [x, lo, hi], f"{prefix}.a_clip")
    if aq.border is not None:
        k, c = aq.border.effective()
        shape = (1, -1) + (1,) * (rank - 2)
        slope = g.const(f"{prefix}.border_slope", _array(1 - k).reshape(shape))
        offset = g.const(f"{prefix}.border_offset", _array(c * step).reshape(shape))
        y = g.op("Sub", [g.op("Mul", [y, slope], f"{prefix}.border_mul"), offset],
                 f"{prefix}.border_affine")  # fmt: skip
    q = g.op("QuantizeLinear", [y, scale, zero], f"{prefix}.a_quant")
    return g.op("DequantizeLinear", [q, scale, zero], f"{prefix}.a_dequant")


def _weight(g: _Graph, layer: QuantLayer, prefix: str) -> str:
    """Dequantized weight: integer codes + per-channel (or per-tensor) scale and zero point."""
    if not layer.weight_enabled:
        return g.const(f"{prefix}.weight", _array(layer.layer.weight))
    wq = layer.weight_quantizer
    if not wq.frozen:
        raise OnnxExportError(f"layer '{prefix}' is not frozen: call freeze_model before export")
    int_type = np.int8 if wq.grid.signed else np.uint8
    codes = g.const(f"{prefix}.weight_codes", wq.codes.cpu().numpy().astype(int_type))
    flat = (-1,) if wq.per_channel else ()
    scale = g.const(f"{prefix}.weight_scale", _array(wq.scale).reshape(flat))
    zero = g.const(f"{prefix}.weight_zero_point",
                   _array(wq.zero_point).round().astype(int_type).reshape(flat))  # fmt: skip
    return g.op("DequantizeLinear", [codes, scale, zero], f"{prefix}.weight_dq", axis=0)


def _conv_attrs(conv: nn.Conv2d, where: str) -> dict[str, Any]:
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise OnnxExportError(
            f"conv '{where}': padding={conv.padding!r}, padding_mode={conv.padding_mode!r} "
            "cannot be exported (only integer zero padding)"
        )
    ph, pw = conv.padding
    return {"strides": list(conv.stride), "pads": [ph, pw, ph, pw],
            "dilations": list(conv.dilation), "group": conv.groups,
            "kernel_shape": list(conv.kernel_size)}  # fmt: skip


def _quant_layer(g: _Graph, x: str, layer: QuantLayer, where: str, rank: int) -> str:
    x = _act_qdq(g, x, layer.input_quantizer, where, rank)
    weight = _weight(g, layer, where)
    if isinstance(layer, QuantLinear):
        if rank != 2:
            raise OnnxExportError(f"linear '{where}' gets a rank-{rank} input; only 2-D exports")
        y = g.op("Gemm", [x, weight], where, transB=1)
    else:
        y = g.op("Conv", [x, weight], where, **_conv_attrs(layer.layer, where))
    if layer.layer.bias is None:
        return y
    # A separate Add keeps the bias float: given a Conv/Gemm bias input next to Q/DQ inputs,
    # onnxruntime's WeightBiasQuantization rounds it to int32 (scale s_in * s_w), which moves
    # outputs off the PyTorch model's (ResNet-20 W4A4: 21 of 2,000 argmax predictions).
    shape = (1, -1) + (1,) * (rank - 2)
    bias = g.const(f"{where}.bias", _array(layer.layer.bias).reshape(shape))
    return g.op("Add", [y, bias], f"{where}.add_bias")


def _pool_attrs(m: nn.MaxPool2d | nn.AvgPool2d, where: str) -> dict[str, Any]:
    def pair(v: int | tuple[int, ...]) -> list[int]:
        return list(v) if isinstance(v, tuple) else [v, v]

    pad = pair(m.padding)
    attrs = {"kernel_shape": pair(m.kernel_size), "strides": pair(m.stride or m.kernel_size),
             "pads": pad + pad, "ceil_mode": int(m.ceil_mode)}  # fmt: skip
    if isinstance(m, nn.MaxPool2d) and pair(m.dilation) != [1, 1]:
        attrs["dilations"] = pair(m.dilation)
    return attrs


def _is_global(output_size: Any) -> bool:
    return output_size in (1, (1, 1), [1, 1])


def _module(g: _Graph, x: str, m: nn.Module, where: str, rank: int) -> str:
    """One call_module node; returns the output name."""
    if isinstance(m, QuantLayer):
        return _quant_layer(g, x, m, where, rank)
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, nn.ReLU):
        return g.op("Relu", [x], where)
    if isinstance(m, nn.Hardtanh):  # ReLU6 included
        lo = g.const(f"{where}.min", _array(m.min_val))
        hi = g.const(f"{where}.max", _array(m.max_val))
        return g.op("Clip", [x, lo, hi], where)
    if isinstance(m, nn.AdaptiveAvgPool2d) and _is_global(m.output_size):
        return g.op("GlobalAveragePool", [x], where)
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        return g.op("MaxPool", [x], where, **_pool_attrs(m, where))
    if isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
        return g.op("AveragePool", [x], where, count_include_pad=int(m.count_include_pad),
                    **_pool_attrs(m, where))  # fmt: skip
    if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
        return g.op("Flatten", [x], where, axis=1)
    raise OnnxExportError(f"module '{where}' ({type(m).__name__}) has no ONNX mapping here")


_ADD = {operator.add, operator.iadd, torch.add}
_RELU = {F.relu, torch.relu}


def _flatten(g: _Graph, x: str, start: int, end: int, where: str, rank: int) -> str:
    if start != 1 or end not in (-1, rank - 1):
        raise OnnxExportError(f"'{where}': only flatten(1) exports (got {start}..{end})")
    return g.op("Flatten", [x], where, axis=1)


def _function(g: _Graph, node: fx.Node, args: list[Any], rank: int) -> str:
    """One call_function / call_method node with already-resolved arguments."""
    fn, where = node.target, node.name
    kw = node.kwargs
    if fn in _ADD or fn == "add":
        return g.op("Add", [args[0], args[1]], where)
    if fn in (operator.mul, torch.mul) or fn == "mul":
        return g.op("Mul", [args[0], args[1]], where)
    if fn in _RELU or fn == "relu":
        return g.op("Relu", [args[0]], where)
    if fn is torch.flatten or fn == "flatten":
        start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
        return _flatten(g, args[0], start, end, where, rank)
    if fn is F.adaptive_avg_pool2d and _is_global(args[1] if len(args) > 1 else kw["output_size"]):
        return g.op("GlobalAveragePool", [args[0]], where)
    if fn == "mean":
        dims = args[1] if len(args) > 1 else kw.get("dim")
        keep = args[2] if len(args) > 2 else kw.get("keepdim", False)
        dims = [dims] if isinstance(dims, int) else list(dims)
        return g.op("ReduceMean", [args[0]], where, axes=dims, keepdims=int(keep))
    if fn is torch.cat:
        dim = args[1] if len(args) > 1 else kw.get("dim", 0)
        return g.op("Concat", list(args[0]), where, axis=dim)
    raise OnnxExportError(f"operation '{where}' ({getattr(fn, '__name__', fn)}) "
                          "has no ONNX mapping here")  # fmt: skip


def _ranks(model: nn.Module, graph: fx.Graph, example: Tensor) -> dict[str, int]:
    """Tensor rank of every node's output, from one forward pass of the traced graph."""
    ranks: dict[str, int] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, Tensor):
                ranks[n.name] = out.dim()
            return out

    with torch.no_grad():
        Recorder(fx.GraphModule(model, graph)).run(example)
    return ranks


def to_onnx(qmodel: nn.Module, example: Tensor) -> onnx.ModelProto:
    """The QDQ ONNX model of a frozen quantized model; ``example`` is one input batch."""
    qmodel = qmodel.eval()
    try:
        graph = _QuantLeafTracer().trace(qmodel)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the same user problem
        raise OnnxExportError(f"cannot trace {type(qmodel).__name__} with torch.fx: {exc}") from exc
    example = example.to(next(qmodel.parameters()).device)
    ranks = _ranks(qmodel, graph, example)
    g = _Graph()
    values: dict[str, Any] = {}
    output = None

    def resolve(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: values[n.name])

    for node in graph.nodes:
        if node.op == "placeholder":
            g.name(INPUT_NAME)
            values[node.name] = INPUT_NAME
        elif node.op == "call_module":
            x = resolve(node.args[0])
            rank = ranks[node.args[0].name]
            values[node.name] = _module(g, x, qmodel.get_submodule(node.target), node.target, rank)
        elif node.op in ("call_function", "call_method"):
            first = node.args[0]
            rank = ranks.get(first.name, 0) if isinstance(first, fx.Node) else 0
            values[node.name] = _function(g, node, list(resolve(node.args)), rank)
        elif node.op == "output":
            output = resolve(node.args[0])
        else:
            raise OnnxExportError(f"graph node '{node.name}' ({node.op}) has no ONNX mapping")
    if not isinstance(output, str):
        raise OnnxExportError("only models with one tensor output export")
    g.nodes.append(helper.make_node("Identity", [output], [OUTPUT_NAME], name=OUTPUT_NAME))
    shape = ["batch", *example.shape[1:]]
    graph_proto = helper.make_graph(
        g.nodes, "attnround_pl_qdq",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", None])],
        initializer=g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph_proto, producer_name="attnround-pl",
                              opset_imports=[helper.make_opsetid("", OPSET)])  # fmt: skip
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(qmodel: nn.Module, example: Tensor, path: str | os.PathLike) -> Path:
    """Write the QDQ ONNX model of ``qmodel`` to ``path`` (checked by onnx.checker)."""
    model = to_onnx(qmodel, example)
    return write_atomically(path, lambda tmp: onnx.save_model(model, str(tmp)))
