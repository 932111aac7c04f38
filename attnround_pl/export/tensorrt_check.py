"""A structural check of an ONNX QDQ graph against what TensorRT's explicit quantization takes.

TensorRT cannot run here (no NVIDIA GPU, no TensorRT wheel); ``check_tensorrt_graph`` reads the
graph and lists what TensorRT's ONNX parser would refuse or run otherwise than onnxruntime
(``violations``) and where its docs recommend another Q/DQ placement for speed (``warnings``),
each a ``Finding``: a fixed ``rule`` key and a one-line ``message`` naming the node. A graph
exported from a model quantized with ``quant.profile: tensorrt`` (``quant.profiles``) has no
violations; the default profile's (uint8 activations after a ReLU, asymmetric uint8 weights)
has. onnxruntime's agreement with PyTorch is checked apart (``verify.compare_with_onnx``).

Violations (sources: ``quant.profiles.TENSORRT_DOCS``):

- the default-domain opset outside 9..``TRT_MAX_OPSET`` (20): the range TensorRT 10.0/10.1's ONNX
  parser documents (onnx-tensorrt ``docs/operators.md``; later releases take higher opsets);
- a QuantizeLinear / DequantizeLinear without a zero point (ONNX then quantizes to UINT8,
  TensorRT to INT8: the runtimes disagree), with a zero point that is not a constant, not INT8
  (UINT8, INT4, UINT4, ...) or not all 0 ("TensorRT only supports symmetric quantization" and
  refuses UINT8 quantized tensors, onnx-tensorrt ``QuantDequantLinearHelper``), or whose scale
  is not a constant of positive finite floats;
- a per-axis (non-scalar) scale on an activation (TensorRT takes per-axis scales for weights
  only), a scale of rank above 1 (blocks), or a per-axis scale whose length is not the size of
  the data along ``axis``;
- a QuantizeLinear read by anything but DequantizeLinear (or a graph output);
- a Conv / ConvTranspose / Gemm / MatMul whose data input does not come (past Reshape,
  Transpose, Flatten, Squeeze, Unsqueeze, Identity) from a DequantizeLinear fed by a
  QuantizeLinear, or whose weight does not come from a DequantizeLinear of a constant INT8
  tensor dequantized per tensor or along its output channels (Conv: axis 0; Gemm: 0 with
  ``transB=1``, else 1; MatMul: the last axis; followed back through a Transpose's ``perm``);
- a Clip right before a QuantizeLinear that limits the codes to a range inside INT8 (a b-bit
  grid kept in an 8-bit type, how this exporter writes grids of fewer than 8 bits): TensorRT
  quantizes to the whole INT8 range.

Warnings:

- an Add of two computed tensors, one of them the output of a Conv/Gemm/MatMul (past its bias
  Add), neither from a DequantizeLinear: NVIDIA's TensorRT quantization toolkit asks for Q/DQ
  on the residual connections of ResNet models for optimal INT8 fusions (``["residual"]``),
  TensorRT's Q/DQ placement recommendations for the residual input of such an Add, so that the
  Add fuses into the convolution with an INT8 output. With ``act_placement: layers`` our
  graphs quantize only the inputs of Conv/Gemm (the block input of a ResNet or MobileNetV2
  residual is quantized on its way into the next convolution, not on the identity branch):
  writing that Q/DQ needs a quantizer on the model's shortcut branch (on the identity, or
  after the shortcut's convolution in a ResNet's downsampling block). Where both inputs come
  from convolutions (a downsampling block; a MobileNetV2 block whose input is the previous
  block's projection) the message names neither as the residual one.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

TRT_MIN_OPSET = 9
TRT_MAX_OPSET = 20  # TensorRT 10.0/10.1's ONNX parser: "opset 9 to opset 20"
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ = ("QuantizeLinear", "DequantizeLinear")
_MOVES = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
_CODE_TOLERANCE = 1e-3  # a Clip bound within this many steps of an integer code is a code


@dataclass(frozen=True)
class Finding:
    """One violation or warning: ``rule`` (a short fixed key, e.g. ``zero_point_type``) and the
    ``message`` naming the node, what it holds and what TensorRT takes."""

    rule: str
    message: str


@dataclass(frozen=True)
class TensorRTCheck:
    """What ``check_tensorrt_graph`` found: ``violations`` (empty: TensorRT's explicit
    quantization takes the graph and computes what onnxruntime computes), ``warnings`` (Q/DQ
    placements its docs recommend for speed), the graph's ``opset``, and how many of its
    ``weighted_ops`` (Conv/Gemm/MatMul) have Q/DQ on both data and weight (``quantized_ops``)."""

    violations: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    opset: int
    weighted_ops: int
    quantized_ops: int

    @property
    def passed(self) -> bool:
        return not self.violations

    def counts(self, which: str = "violations") -> dict[str, int]:
        """How many ``violations`` (or ``warnings``) of each rule."""
        out: dict[str, int] = {}
        for f in getattr(self, which):
            out[f.rule] = out.get(f.rule, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "opset": self.opset, "weighted_ops": self.weighted_ops,
                "quantized_ops": self.quantized_ops,
                "violations": [asdict(f) for f in self.violations],
                "warnings": [asdict(f) for f in self.warnings]}


class _Graph:
    """Producers, consumers and constants of one graph, by tensor name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.outputs = {o.name for o in graph.output}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.constants: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.constants[n.output[0]] = n.attribute[0].t

    def const(self, name: str) -> onnx.TensorProto | None:
        """The constant tensor ``name`` is (an initializer or a Constant node's output, also
        through Identity), else None."""
        while name not in self.constants and name in self.producer:
            node = self.producer[name]
            if node.op_type != "Identity":
                return None
            name = node.input[0]
        return self.constants.get(name)

    def values(self, name: str) -> np.ndarray | None:
        tensor = self.const(name)
        if tensor is None:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception:  # a type numpy has no form for
            return None

    def source(self, name: str) -> onnx.NodeProto | None:
        """The node computing ``name`` past ops that only move data (None: a graph input or
        a constant)."""
        node = self.producer.get(name)
        while node is not None and node.op_type in _MOVES:
            node = self.producer.get(node.input[0])
        return node


def _type_name(data_type: int) -> str:
    return onnx.TensorProto.DataType.Name(data_type)


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _check_zero_point(g: _Graph, node: onnx.NodeProto) -> list[Finding]:
    what = _label(node)
    zero = node.input[2] if len(node.input) > 2 else ""
    if not zero:
        return [Finding("zero_point_missing", f"{what} has no zero point: ONNX then quantizes to "
                        "UINT8, TensorRT to INT8")]
    z = g.const(zero)
    if z is None:
        return [Finding("zero_point_not_constant",
                        f"{what}: its zero point '{zero}' is not a constant")]
    if z.data_type != onnx.TensorProto.INT8:
        return [Finding("zero_point_type", f"{what}: zero point of type "
                        f"{_type_name(z.data_type)}; TensorRT's explicit quantization takes "
                        "INT8 with zero point 0")]
    values = g.values(zero)
    if values is not None and np.any(values != 0):
        return [Finding("zero_point_nonzero", f"{what}: zero point {values.ravel()[:4].tolist()} "
                        "is not 0; TensorRT only takes symmetric quantization")]
    return []


def _check_scale(g: _Graph, node: onnx.NodeProto, scale: np.ndarray) -> list[Finding]:
    what, data = _label(node), g.const(node.input[0])
    found = []
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        found.append(Finding("scale_value", f"{what}: scale has values that are not positive "
                             "and finite"))
    if scale.size == 1:
        return found
    if data is None:
        found.append(Finding("activation_per_axis", f"{what}: per-axis scale ({scale.size} "
                             "values) on an activation; TensorRT takes per-axis scales for "
                             "weights only"))
    elif scale.ndim > 1:
        found.append(Finding("blocked_scale", f"{what}: scale of rank {scale.ndim} (blocks); "
                             "TensorRT's INT8 takes a scalar or one scale per output channel"))
    else:
        axis = _attr(node, "axis", 1) % max(len(data.dims), 1)
        if data.dims[axis] != scale.size:
            found.append(Finding("scale_length", f"{what}: {scale.size} scales for "
                                 f"{data.dims[axis]} channels along axis {axis}"))
    return found


def _check_qdq(g: _Graph, node: onnx.NodeProto) -> list[Finding]:
    """The violations of one QuantizeLinear / DequantizeLinear."""
    what, found = _label(node), _check_zero_point(g, node)
    scale = g.values(node.input[1])
    if scale is None or scale.dtype.kind != "f":
        found.append(Finding("scale_not_constant",
                             f"{what}: its scale '{node.input[1]}' is not a float constant"))
    else:
        found += _check_scale(g, node, scale)
    data = g.const(node.input[0])
    if node.op_type == "DequantizeLinear" and data is not None \
            and data.data_type != onnx.TensorProto.INT8:
        found.append(Finding("code_type", f"{what}: dequantizes constant codes of type "
                             f"{_type_name(data.data_type)}, not INT8"))
    if node.op_type == "QuantizeLinear":
        readers = [n for n in g.consumers.get(node.output[0], [])
                   if n.op_type != "DequantizeLinear"]
        if readers or node.output[0] in g.outputs:
            reader = _label(readers[0]) if readers else "a graph output"
            found.append(Finding("quantized_reader", f"{what} is read by {reader}; TensorRT "
                                 "reads quantized tensors through DequantizeLinear only"))
        if scale is not None and scale.size == 1:
            found += _check_clip(g, node, float(scale.ravel()[0]))
    return found


def _check_clip(g: _Graph, q: onnx.NodeProto, step: float) -> list[Finding]:
    """A Clip right before ``q`` whose bounds are codes inside INT8: a narrower grid."""
    clip = g.producer.get(q.input[0])
    if clip is None or clip.op_type != "Clip" or len(clip.input) < 3:
        return []
    lo, hi = g.values(clip.input[1]), g.values(clip.input[2])
    if lo is None or hi is None or lo.size != 1 or hi.size != 1 or step <= 0:
        return []
    codes = [float(lo.ravel()[0]) / step, float(hi.ravel()[0]) / step]
    if not all(math.isfinite(c) and abs(c - round(c)) < _CODE_TOLERANCE for c in codes):
        return []  # a model's own clamp (ReLU6), not a grid
    qmin, qmax = round(codes[0]), round(codes[1])
    if qmin < -128 or qmax > 127 or (qmin, qmax) == (-128, 127) or qmax <= qmin:
        return []
    bits = math.ceil(math.log2(qmax - qmin + 1))
    return [Finding("narrow_grid", f"{_label(q)}: the {_label(clip)} before it keeps the codes "
                    f"in [{qmin}, {qmax}] (a {bits}-bit grid in INT8); TensorRT quantizes to the "
                    "whole INT8 range: calibrate at 8 bits")]


def _weight_dq(g: _Graph, name: str) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
    """(the node computing the weight ``name`` past data moves, the moves in between, from the
    op back)."""
    node, moves = g.producer.get(name), []
    while node is not None and node.op_type in _MOVES:
        moves.append(node)
        node = g.producer.get(node.input[0])
    return node, moves


def _channel_axis(node: onnx.NodeProto, rank: int, moves: list[onnx.NodeProto]) -> int | None:
    """The axis of the dequantized weight (``rank`` dims) holding the op's output channels:
    Conv 0, Gemm 0 with transB else 1, MatMul the last, followed back through each Transpose's
    perm; None past a reshape, or for ConvTranspose."""
    axis = {"Conv": 0, "MatMul": rank - 1,
            "Gemm": 0 if _attr(node, "transB", 0) else 1}.get(node.op_type)
    for move in moves:
        if axis is None:
            break
        if move.op_type == "Transpose":
            perm = _attr(move, "perm", None)
            axis = perm[axis] if perm is not None else rank - 1 - axis
        elif move.op_type != "Identity":
            axis = None
    return axis


def _is_weight(g: _Graph, name: str) -> bool:
    node, _ = _weight_dq(g, name)
    return node is not None and node.op_type == "DequantizeLinear" \
        and g.const(node.input[0]) is not None


def _check_data_input(g: _Graph, node: onnx.NodeProto, name: str) -> list[Finding]:
    what, data = _label(node), g.source(name)
    if data is None or data.op_type != "DequantizeLinear":
        return [Finding("float_input", f"{what}: its input '{name}' has no QuantizeLinear/"
                        "DequantizeLinear before it; TensorRT runs it in INT8 only with Q/DQ "
                        "on its inputs")]
    q = g.producer.get(data.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return [Finding("input_without_quantize", f"{what}: its input comes from "
                        f"{_label(data)}, which no QuantizeLinear feeds")]
    return []


def _check_weight(g: _Graph, node: onnx.NodeProto, name: str) -> list[Finding]:
    what = _label(node)
    dq, moves = _weight_dq(g, name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return [Finding("float_weight", f"{what}: its weight '{name}' is not dequantized INT8 "
                        "codes; TensorRT needs a DequantizeLinear between quantized weights and "
                        "the op")]
    codes = g.const(dq.input[0])
    if codes is None:
        return [Finding("computed_weight", f"{what}: its weight comes from {_label(dq)} of a "
                        "computed tensor, not of constant INT8 codes")]
    scale = g.values(dq.input[1])
    rank = len(codes.dims)
    axis = _channel_axis(node, rank, moves)
    dq_axis = _attr(dq, "axis", 1) % max(rank, 1)
    if scale is not None and scale.size > 1 and axis is not None and dq_axis != axis:
        return [Finding("weight_axis", f"{what}: weights dequantized along axis {dq_axis}; its "
                        f"output channels are axis {axis} of '{dq.input[0]}'")]
    return []


def _check_weighted(g: _Graph, node: onnx.NodeProto) -> list[Finding]:
    """The violations of one Conv / Gemm / MatMul: its data and weight inputs (a MatMul of two
    activations: both as data)."""
    data, weight = node.input[0], node.input[1]
    if node.op_type == "MatMul":
        if _is_weight(g, data) and not _is_weight(g, weight):
            data, weight = weight, data
        elif not _is_weight(g, weight):
            return _check_data_input(g, node, data) + _check_data_input(g, node, weight)
    return _check_data_input(g, node, data) + _check_weight(g, node, weight)


def _from_weighted(g: _Graph, name: str) -> onnx.NodeProto | None:
    """The Conv/Gemm/MatMul whose output ``name`` is, past data moves and a bias Add (an Add
    with a constant)."""
    node = g.source(name)
    if node is not None and node.op_type == "Add":
        computed = [i for i in node.input if g.const(i) is None]
        if len(computed) == 1:
            node = g.source(computed[0])
    return node if node is not None and node.op_type in WEIGHTED else None


def _residual_warnings(g: _Graph) -> list[Finding]:
    found = []
    for node in g.nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        if any(g.const(i) is not None for i in node.input):
            continue  # a bias
        weighted = [_from_weighted(g, i) for i in node.input]
        sources = [g.source(i) for i in node.input]
        if not any(weighted) or any(s is not None and s.op_type == "DequantizeLinear"
                                    for s in sources):
            continue
        conv = next(w for w in weighted if w is not None)
        rest = [i for i, w in zip(node.input, weighted, strict=True) if w is None]
        residual = f"its residual input '{rest[0]}'" if rest else "one of its inputs"
        found.append(Finding("residual_input", f"{_label(node)}: neither input is quantized; "
                             f"TensorRT's docs recommend Q/DQ on {residual} so that the Add "
                             f"fuses into {_label(conv)} with an INT8 output (needs a quantizer "
                             "on the model's shortcut branch)"))
    return found


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_tensorrt_graph(
    model: onnx.ModelProto | str | os.PathLike, max_opset: int = TRT_MAX_OPSET
) -> TensorRTCheck:
    """Check ``model`` (a ModelProto or an ``.onnx`` path) against the rules of TensorRT's
    explicit quantization (see the module docstring); ``max_opset``: the highest opset the
    target TensorRT's ONNX parser takes (20 for TensorRT 10.0/10.1)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    g = _Graph(model)
    opset = _opset(model)
    violations = []
    if not TRT_MIN_OPSET <= opset <= max_opset:
        violations.append(Finding("opset", f"opset {opset}: TensorRT's ONNX parser takes opsets "
                                  f"{TRT_MIN_OPSET}..{max_opset}; export at opset 18"))
    weighted = quantized = 0
    for node in g.nodes:
        if node.op_type in QDQ:
            violations += _check_qdq(g, node)
        elif node.op_type in WEIGHTED:
            found = _check_weighted(g, node)
            weighted, quantized = weighted + 1, quantized + (not found)
            violations += found
    return TensorRTCheck(violations=tuple(violations), warnings=tuple(_residual_warnings(g)),
                         opset=opset, weighted_ops=weighted, quantized_ops=quantized)
