"""ONNX export of a frozen quantized model as a QuantizeLinear/DequantizeLinear (QDQ) graph.

``torch.onnx`` translates the model; this module adds only the quantization rules. Inside
``_export_forwards`` every ``QuantLayer`` runs a forward built from three marker ops
(``torch.library`` custom ops, see ``_marker_ops``) around the float op of its layer:

    act_qdq(x) -> conv / linear (no bias) with weight_dq(W) -> bias_add(y)

``torch.onnx.export(..., dynamo=True)`` translates every float op (convolutions with any padding,
BatchNorm, SiLU, Hardswish, interpolation, concat, dict outputs, ...) with its own op library,
and each marker through a ``custom_translation_table`` entry into one placeholder node of the
private domain ``DOMAIN`` that carries the layer's module path. ``_expand_markers`` then
replaces each placeholder by the QDQ ops below, with initializers and nodes named after the
module path (``onnx_name``), so ``verify.first_code_divergence`` finds a layer's activation
QuantizeLinear as ``onnx_name(f"{path}.a_quant")``. No placeholder is left in the written model:

- weights: integer codes as an initializer of the container type (below), then
  ``DequantizeLinear`` with per-output-channel scale and zero point (``axis=0``) of that type;
- activation quantizers: ``Clip(x, qmin*s, qmax*s)`` -> ``QuantizeLinear(s, 0)`` ->
  ``DequantizeLinear(s, 0)``. The Clip limits the codes to ``[qmin, qmax]`` of a b-bit grid
  narrower than its container (e.g. 0..7 for unsigned 3 bits in uint8); where the grid fills
  the container, QuantizeLinear's own saturation is the same clamp and the Clip is left out;
- an AQuant border (see ``quant.act_border``) becomes the per-channel affine of its folded form
  ``round((1 - k) x~ - c)`` between the Clip and QuantizeLinear: ``y = x (1 - k) - c s``;
  QuantizeLinear's round-half-to-even is the rounding of the folded form;
- the float bias is a separate ``Add`` after the Conv / Gemm / MatMul (see ``_bias``).

A model quantized with ``quant.profile: tensorrt`` (signed symmetric 8-bit grids everywhere,
``quant.profiles``) comes out as INT8 codes and INT8 zero points 0 at opset 18, the Q/DQ form
TensorRT's explicit quantization takes; ``tensorrt_check.check_tensorrt_graph`` verifies it.

Two opsets (``opset`` of ``to_onnx`` / ``export_onnx``; ``default_opset``): the container
of a b-bit grid is the narrowest ONNX integer type the opset has for it (``container_bits``):

- opset 21 (``INT4_OPSET``, the default when any weight or activation grid has 4 bits or
  fewer): INT4 / UINT4 (QuantizeLinear / DequantizeLinear 21) for weight grids of 2..4 bits,
  stored two codes a byte, so W4 weight codes take half the bytes of opset 18 (``size``);
  a 4-bit activation grid is quantized to uint4 / int4, no Clip. onnxruntime 1.32 runs
  those (per-axis int4 / uint4 weights, per-tensor uint4 / int4 activations, with Conv, Gemm
  and MatMul), but its default graph optimizations fail on a 4-bit QuantizeLinear after a
  Clip (ClipQuantFusion) or a MaxPool (Q/DQ propagation) and mishandle a signed one after a
  Relu, so such an activation, and every 2- or 3-bit activation grid (which needs the Clip),
  keeps an 8-bit container (``_act_container``): the same codes either way. Grids of 5..8
  bits are 8-bit. torch.onnx writes its op library's opset-18 graph at 21 with onnxscript's
  version converter (it raises each op's version, with an adapter for the few whose meaning
  changed, e.g. GroupNormalization 21); the QDQ ops are added after that, at the model's
  opset, and the result passes ``onnx.checker`` (full check);
- opset 18 (``OPSET``, the default when every grid has more than 4 bits, and the choice for a
  runtime without INT4 QuantizeLinear / DequantizeLinear: onnxruntime's CPU kernels gained
  them in 1.19, microsoft/onnxruntime#20362; 1.18.1 refuses an opset-21 export, "tensor type
  21 is not supported", ``benchmarks/onnxruntime_versions.sh``): every grid in an 8-bit container,
  int8 / uint8 with the Clip rule above. Opsets 19 and 20 write the same as 18. Below 18 is
  refused: torch.onnx's op library is written for opset 18 and the ONNX version converter
  cannot take its graphs lower (no adapter for Mul 14 -> 13; ReduceMean's axes input).

Why the dynamo exporter: torch 2.14.1 still ships the TorchScript exporter (``dynamo=False``)
but warns that it is legacy (a DeprecationWarning since torch 2.9, when the dynamo exporter
became the default); the dynamo exporter is the maintained path, flattens a dict output by key,
names the batch dimension through ``dynamic_shapes`` and takes our markers through
``custom_translation_table`` (the TorchScript one would need a symbolic function per marker and
names its nodes by scope just the same, so the placeholder expansion would stay). It is slower:
a float torchvision ResNet-50 at 32x32 px took 4 s against 1.8 s with the TorchScript exporter
on the 2-core development CPU (shared, times vary); a frozen W4A4 ResNet-50 (10 classes, same
size) exports in 4.6 s, a small CNN in about 1 s after the first export of a process (3 s, the
exporter's imports and op registry).

onnxruntime caveat: its ClipQuantFusion drops a Clip whose range lies within float epsilon
(absolute, 1.2e-7) of an 8-bit QuantizeLinear's range, so an activation step below about
1e-9 (a degenerate random-weight net) loses its b-bit Clip in onnxruntime;
``verify.first_code_divergence`` then reports codes outside the b-bit grid as an export fault.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import types
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import Tensor, nn

from ..atomic import write_atomically
from ..errors import InputError
from ..quant import ActQuantizer, QuantConv1d, QuantConv2d, QuantLayer, QuantLinear
from ..quant.placement import block_input_quantizers
from .metadata import export_meta, onnx_metadata, set_onnx_metadata

OPSET = 18  # torch.onnx's op library: 8-bit containers for every grid
INT4_OPSET = 21  # the first opset with INT4 / UINT4 (QuantizeLinear / DequantizeLinear 21)
OPSETS = range(OPSET, INT4_OPSET + 1)  # the opsets this exporter writes
INPUT_NAME = "input"
OUTPUT_NAME = "logits"  # the graph output of a model returning one tensor
BATCH_DIM = "batch"
DOMAIN = "attnround.marker"  # placeholder nodes between torch.onnx and _expand_markers only
_LIBRARY = "attnround_export"  # torch.library namespace of the marker ops
_STRIPPED_METADATA = ("pkg.torch.onnx.stack_trace",)  # local source paths: not for a deployment


class OnnxExportError(InputError, RuntimeError):
    """The model holds something the QDQ exporter cannot write."""


def _array(t: Tensor | float | list, dtype: np.dtype = np.float32) -> np.ndarray:
    if isinstance(t, Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=dtype)


def onnx_name(hint: str) -> str:
    """The graph name of a node or initializer named after ``hint`` (a module path and suffix,
    e.g. ``layer1.0.conv1.a_quant``); a repeated hint gets ``_1``, ``_2``, ... after it."""
    return hint.replace(".", "_") or "t"


class _Graph:
    """Collects ONNX nodes and initializers with names unique in the graph (``taken`` holds the
    names torch.onnx already used)."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set(taken or ())

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

    def ints(self, hint: str, values: np.ndarray, bits: int, signed: bool) -> str:
        """An integer initializer in the ``bits``-wide container (see ``_int_tensor``)."""
        name = self.name(hint)
        self.initializers.append(_int_tensor(name, values, bits, signed))
        return name

    def op(
        self, op_type: str, inputs: list[str], hint: str, out: str | None = None, **attrs: Any
    ) -> str:
        """Append a node named after ``hint``; its output is ``out`` if given, else its name."""
        name = self.name(hint)
        out = out or name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out


_TYPES = {  # (container bits, signed) -> ONNX element type
    (8, False): onnx.TensorProto.UINT8, (8, True): onnx.TensorProto.INT8,
    (4, False): onnx.TensorProto.UINT4, (4, True): onnx.TensorProto.INT4,
}


def container_bits(bits: int, opset: int) -> int:
    """The width of the ONNX integer type that holds a ``bits``-bit grid at ``opset``: 4 for a
    grid of 4 bits or fewer from ``INT4_OPSET`` on, else 8."""
    return 4 if bits <= 4 and opset >= INT4_OPSET else 8


def _grid_bits(qmodel: nn.Module) -> list[int]:
    """The bit widths of every weight and activation grid the export writes."""
    bits = []
    for m in qmodel.modules():
        if isinstance(m, QuantLayer):
            if m.weight_enabled:
                bits.append(m.weight_quantizer.bits)
            aq = m.input_quantizer
            if aq.active and aq.enabled:
                bits.append(aq.bits)
    return bits


def default_opset(qmodel: nn.Module) -> int:
    """The lowest opset that holds the model's grids in their own width: ``INT4_OPSET`` (21)
    when any weight or activation grid has 4 bits or fewer, else ``OPSET`` (18)."""
    return INT4_OPSET if any(b <= 4 for b in _grid_bits(qmodel)) else OPSET


def check_opset(opset: Any) -> int:
    """``opset`` if the exporter writes it (``OPSETS``: 18..21), else an OnnxExportError."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise OnnxExportError(
            f"opset={opset!r} is not one the ONNX export writes: {OPSET} (every grid in an "
            f"8-bit type) to {INT4_OPSET} (INT4/UINT4 for grids of 4 bits or fewer); torch.onnx "
            f"writes opset {OPSET} and the ONNX version converter cannot take it lower"
        )
    return opset


# ops that move data only: onnxruntime moves a QuantizeLinear up through them (its
# QDQPropagationTransformer: MaxPool, Reshape, Transpose, Squeeze, Unsqueeze, Slice)
_MOVES_DATA = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Flatten", "Identity"}


def _source(x: str, producers: Mapping[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node that computes the tensor ``x``, past ops that only move data (None: an input)."""
    node = producers.get(x)
    while node is not None and node.op_type in _MOVES_DATA:
        node = producers.get(node.input[0])
    return node


def _act_container(
    aq: ActQuantizer, x: str, producers: Mapping[str, onnx.NodeProto], opset: int
) -> int:
    """The container width (8 or 4) of the QuantizeLinear of an activation quantizer with
    input ``x``: 4 for a 4-bit grid from ``INT4_OPSET`` on, except where onnxruntime's graph
    optimizations (on by default) break a 4-bit QuantizeLinear (1.32, CPU):

    - after a Clip (ReLU6, Hardtanh, or our own Clip of a 2- or 3-bit grid), ClipQuantFusion
      throws "Unexpected data type for QuantizeLinear input y_zero_point of 21";
    - after a MaxPool, the QuantizeLinear is moved up onto the MaxPool's input and the DQ/Q
      pair around the MaxPool dropped, which leaves the MaxPool on uint4: "INVALID_GRAPH : ...
      Type 'tensor(uint4)' of input parameter (..._q_to_dq) of operator (MaxPool) ...";
    - a signed grid after a Relu: ReluQuantFusion drops the Relu before any zero point that is
      not 8-bit, which is right for uint4 (saturates at 0) but not for int4 (saturates at -8).

    There the grid keeps an 8-bit container (with the Clip, as at opset 18): same codes."""
    if aq.bits != 4 or opset < INT4_OPSET:
        return 8
    source = _source(x, producers)
    op = source.op_type if source is not None else ""
    if op in ("Clip", "MaxPool") or (op == "Relu" and aq.grid.signed):
        return 8
    return 4


def _int_tensor(name: str, values: np.ndarray, bits: int, signed: bool) -> onnx.TensorProto:
    """An integer initializer of the ``bits``-wide ONNX type (8 or 4): a 4-bit one packs two
    values a byte, the first in the low nibble (the ONNX layout), padded to a whole byte."""
    if bits == 8:
        return numpy_helper.from_array(values.astype(np.int8 if signed else np.uint8), name)
    nibbles = values.astype(np.int16).ravel() & 0xF  # two's complement for a signed value
    if nibbles.size % 2:
        nibbles = np.append(nibbles, 0)
    packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
    return helper.make_tensor(name, _TYPES[bits, signed], values.shape, packed, raw=True)


def _channel_shape(rank: int) -> tuple[int, ...]:
    """Shape of a per-channel tensor (channels on axis 1) broadcast against a rank-``rank``
    activation."""
    return (1, -1) + (1,) * (rank - 2)


def _act_qdq(
    g: _Graph, x: str, aq: ActQuantizer, prefix: str, rank: int, out: str, width: int
) -> str:
    """Q/DQ pair of one activation quantizer (with the folded AQuant border if it has one) in
    a ``width``-bit container (8 or 4)."""
    grid, step = aq.grid, float(aq.step.detach())
    scale = g.const(f"{prefix}.a_scale", _array(step))
    zero = g.ints(f"{prefix}.a_zero_point", np.zeros((), np.int8), width, grid.signed)
    y = x
    if grid.bits < width or aq.border is not None:  # the container's saturation is not the grid
        lo = g.const(f"{prefix}.a_min", _array(grid.qmin * step))
        hi = g.const(f"{prefix}.a_max", _array(grid.qmax * step))
        y = g.op("Clip", [x, lo, hi], f"{prefix}.a_clip")
    if aq.border is not None:
        k, c = aq.border.effective()
        slope = g.const(f"{prefix}.border_slope", _array(1 - k).reshape(_channel_shape(rank)))
        offset = g.const(f"{prefix}.border_offset",
                         _array(c * step).reshape(_channel_shape(rank)))
        y = g.op("Sub", [g.op("Mul", [y, slope], f"{prefix}.border_mul"), offset],
                 f"{prefix}.border_affine")
    q = g.op("QuantizeLinear", [y, scale, zero], f"{prefix}.a_quant")
    return g.op("DequantizeLinear", [q, scale, zero], f"{prefix}.a_dequant", out=out)


def _weight(g: _Graph, layer: QuantLayer, prefix: str, out: str, opset: int) -> str:
    """Dequantized weight: integer codes + per-channel (or per-tensor) scale and zero point."""
    wq = layer.weight_quantizer
    width, signed = container_bits(wq.grid.bits, opset), wq.grid.signed
    codes = g.ints(f"{prefix}.weight_codes", wq.codes.cpu().numpy(), width, signed)
    flat = (-1,) if wq.per_channel else ()
    scale = g.const(f"{prefix}.weight_scale", _array(wq.scale).reshape(flat))
    zero = g.ints(f"{prefix}.weight_zero_point",
                  _array(wq.zero_point).round().astype(np.int16).reshape(flat), width, signed)
    return g.op("DequantizeLinear", [codes, scale, zero], f"{prefix}.weight_dq", out=out, axis=0)


def _bias_shape(layer: QuantLayer, rank: int) -> tuple[int, ...]:
    """A linear layer's bias adds along the last axis, a convolution's along axis 1."""
    return (-1,) if isinstance(layer, QuantLinear) else _channel_shape(rank)


def _bias(g: _Graph, y: str, layer: QuantLayer, prefix: str, rank: int, out: str) -> str:
    # A separate Add keeps the bias float: given a Conv/Gemm bias input next to Q/DQ inputs,
    # onnxruntime's WeightBiasQuantization rounds it to int32 (scale s_in * s_w), which moves
    # outputs off the PyTorch model's (ResNet-20 W4A4: 21 of 2,000 argmax predictions).
    bias = g.const(f"{prefix}.bias", _array(layer.layer.bias).reshape(_bias_shape(layer, rank)))
    return g.op("Add", [y, bias], f"{prefix}.add_bias", out=out)


# --- marker ops: what a QuantLayer's forward calls while it is exported ----------------------

_EXPORTING: dict[str, Any] = {}  # module path -> layer, filled by _export_forwards only


def _exporting(path: str) -> Any:
    """The layer a marker op names, for the markers' eager kernels (a re-imported module's
    kernels still read the current registry through ``sys.modules``)."""
    layers = sys.modules[__name__]._EXPORTING
    if path not in layers:
        raise RuntimeError(f"marker op for layer '{path}' called outside an ONNX export")
    return layers[path]


def _marker_ops() -> dict[str, Any]:
    """The three marker ops (``torch.ops.attnround_export.*``), registered on first use only.

    Their eager kernels compute what the quantized layer computes (torch.onnx may run a model
    on real tensors when tracing with fake ones fails), their fake kernels give the shapes.
    """
    namespace = getattr(torch.ops, _LIBRARY)
    if not hasattr(namespace, "act_qdq"):

        @torch.library.custom_op(f"{_LIBRARY}::act_qdq", mutates_args=())
        def act_qdq(x: Tensor, layer: str, rank: int) -> Tensor:
            return _exporting(layer).input_quantizer(x).clone()

        @torch.library.custom_op(f"{_LIBRARY}::weight_dq", mutates_args=())
        def weight_dq(w: Tensor, layer: str) -> Tensor:
            return _exporting(layer).quantized_weight().clone()

        @torch.library.custom_op(f"{_LIBRARY}::bias_add", mutates_args=())
        def bias_add(y: Tensor, layer: str, rank: int) -> Tensor:
            q = _exporting(layer)
            return y + q.layer.bias.reshape(_bias_shape(q, rank))

        for op in (act_qdq, bias_add):
            op.register_fake(lambda t, layer, rank: torch.empty_like(t))
        weight_dq.register_fake(lambda w, layer: torch.empty_like(w))
    return {name: getattr(namespace, name).default for name in ("act_qdq", "weight_dq", "bias_add")}


def _placeholder(op_type: str, attrs: dict[str, Any]) -> Any:
    """An onnxscript op of ``DOMAIN`` with one float input and output and ``attrs`` (name ->
    ONNX attribute type): the schema stays local, nothing is registered with onnx."""
    import onnxscript  # the dynamo exporter's own dependency; imported when exporting only
    from onnx.defs import OpSchema

    schema = OpSchema(
        op_type, DOMAIN, 1,
        inputs=[OpSchema.FormalParameter("x", "T")],
        outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(double)", "tensor(float16)",
                                 "tensor(bfloat16)"], "float tensors")],
        attributes=[OpSchema.Attribute(name, kind, name) for name, kind in attrs.items()],
    )
    return onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), op_type, schema)


def _translation_table() -> dict[Any, Any]:
    """torch.onnx's translations of the marker ops: one placeholder node each."""
    from onnx.defs import OpSchema

    string, integer = OpSchema.AttrType.STRING, OpSchema.AttrType.INT
    act = _placeholder("ActQDQ", {"layer": string, "rank": integer})
    weight = _placeholder("WeightDQ", {"layer": string})
    bias = _placeholder("BiasAdd", {"layer": string, "rank": integer})
    ops = _marker_ops()
    return {
        ops["act_qdq"]: lambda x, layer, rank: act(x, layer=layer, rank=rank),
        ops["weight_dq"]: lambda w, layer: weight(w, layer=layer),
        ops["bias_add"]: lambda y, layer, rank: bias(y, layer=layer, rank=rank),
    }


def _check_layer(path: str, m: QuantLayer) -> None:
    if m.weight_enabled and not m.weight_quantizer.frozen:
        raise OnnxExportError(f"layer '{path}' is not frozen: call freeze_model before export")
    aq = m.input_quantizer
    if aq.active and aq.enabled and not aq.initialised:
        raise OnnxExportError(
            f"layer '{path}': activation quantizer is not calibrated (call calibrate_activations)"
        )
    if not isinstance(m, (QuantConv1d, QuantConv2d, QuantLinear)):
        raise OnnxExportError(f"layer '{path}': {type(m).__name__} has no ONNX export")


def _marked_forward(path: str, ops: dict[str, Any]) -> Any:
    """The forward a QuantLayer at ``path`` runs during export: markers around the float op."""

    def forward(self: QuantLayer, x: Tensor) -> Tensor:
        aq = self.input_quantizer
        if aq.active and aq.enabled:
            x = ops["act_qdq"](x, path, x.dim())
        w = self.layer.weight
        if self.weight_enabled:
            w = ops["weight_dq"](w, path)
        if isinstance(self, QuantLinear):
            y = F.linear(x, w)
        else:
            y = self.layer._conv_forward(x, w, None)
        if self.layer.bias is not None:
            y = ops["bias_add"](y, path, y.dim())
        return y

    return forward


class _BlockInputMarker(nn.Module):
    """Stands in for a block's input quantizer (``act_placement="blocks"``) during export: its
    pre-hook then calls the act_qdq marker under the block's path."""

    def __init__(self, path: str, act_qdq: Any) -> None:
        super().__init__()
        self.path, self.act_qdq = path, act_qdq

    def forward(self, x: Tensor) -> Tensor:
        return self.act_qdq(x, self.path, x.dim())


@contextlib.contextmanager
def _export_forwards(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Within: the model in eval mode, each QuantLayer's forward replaced by ``_marked_forward``
    (an instance attribute) and each block input quantizer (``quant.placement``) by a marker;
    afterwards, also on error, forwards, quantizers and train flags restored. Yields {path:
    QuantLayer, or for a block an object whose ``input_quantizer`` is the block's}."""
    layers: dict[str, Any] = {
        path: m for path, m in model.named_modules() if isinstance(m, QuantLayer)}
    for path, m in layers.items():
        _check_layer(path, m)
    blocks = block_input_quantizers(model)
    for path, aq in blocks.items():
        if aq.active and aq.enabled and not aq.initialised:
            raise OnnxExportError(f"block '{path}': input quantizer is not calibrated "
                                  "(call calibrate_activations)")
    ops = _marker_ops()
    modes = {m: m.training for m in model.modules()}
    patched: list[tuple[QuantLayer, Any]] = []
    swapped: list[tuple[nn.Module, ActQuantizer]] = []
    try:
        model.eval()
        for path, m in layers.items():
            patched.append((m, m.__dict__.get("forward")))
            m.forward = types.MethodType(_marked_forward(path, ops), m)
        for path, aq in blocks.items():
            if aq.active and aq.enabled:
                block = model.get_submodule(path)
                swapped.append((block, aq))
                block.input_quantizer = _BlockInputMarker(path, ops["act_qdq"])
                layers[path] = types.SimpleNamespace(input_quantizer=aq)
        _EXPORTING.update(layers)
        yield layers
    finally:
        _EXPORTING.clear()
        for block, aq in swapped:
            block.input_quantizer = aq
        for m, before in patched:
            if before is None:
                del m.forward
            else:
                m.forward = before
        for m, training in modes.items():
            m.training = training


def _output_names(model: nn.Module, out: Any) -> list[str]:
    """Graph output names: ``OUTPUT_NAME`` for one tensor, the keys of a dict of tensors."""
    what = type(model).__name__
    if isinstance(out, Tensor):
        return [OUTPUT_NAME]
    if isinstance(out, Mapping):
        bad = [k for k, v in out.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad or not out:
            raise OnnxExportError(
                f"{what} returned a dict with {'key ' + repr(bad[0]) if bad else 'no entries'}; "
                "only a dict of tensors under string keys exports (one output per key)"
            )
        if INPUT_NAME in out:
            raise OnnxExportError(f"{what} returned a dict with key {INPUT_NAME!r}, the input name")
        return list(out)
    raise OnnxExportError(
        f"{what} returned a {type(out).__name__}; only a tensor or a dict of tensors exports "
        "(return a dict to name several outputs)"
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_OP = re.compile(r"target=(?:torch\.ops\.)?([\w.]+)")


def _failure(model: nn.Module, exc: BaseException) -> str:
    """One line for a torch.onnx failure: the op it failed on (when it says) and why."""
    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    op = next((m.group(1) for e in chain if (m := _FAILED_OP.search(str(e)))), None)
    root = chain[-1]
    lines = [ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()]
    why = f"{type(root).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
    if len(why) > 300:
        why = why[:297] + "..."
    what = type(model).__name__
    where = f"op '{op}' of {what}" if op else what
    return f"torch.onnx cannot export {where} ({why})"


def _expand_markers(proto: onnx.ModelProto, layers: dict[str, Any], opset: int) -> None:
    """Replace each placeholder node by its QDQ ops for ``opset``, in place; drop what they left
    unused."""
    graph = proto.graph
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
    taken |= {t.name for t in graph.initializer} | {v.name for v in graph.input}
    g = _Graph(taken)
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.domain != DOMAIN:
            g.nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        path = attrs["layer"].decode()
        layer, x, out = layers[path], node.input[0], node.output[0]
        if node.op_type == "ActQDQ":
            aq = layer.input_quantizer
            _act_qdq(g, x, aq, path, attrs["rank"], out, _act_container(aq, x, producers, opset))
        elif node.op_type == "WeightDQ":
            _weight(g, layer, path, out, opset)
        else:
            _bias(g, x, layer, path, attrs["rank"], out)
    for node in g.nodes:
        for prop in [p for p in node.metadata_props if p.key in _STRIPPED_METADATA]:
            node.metadata_props.remove(prop)
    used = {i for n in g.nodes for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used] + g.initializers
    del graph.node[:], graph.initializer[:]
    graph.node.extend(g.nodes)
    graph.initializer.extend(kept)
    imports = [o for o in proto.opset_import if o.domain != DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(imports)


def _batch_example(example: Tensor) -> Tensor:
    """``example`` with at least 2 rows: torch.export fixes a dimension of size 1 to 1."""
    return torch.cat([example, example]) if len(example) == 1 else example


def to_onnx(
    qmodel: nn.Module, example: Tensor, meta: Mapping[str, Any] | None = None,
    opset: int | None = None,
) -> onnx.ModelProto:
    """The QDQ ONNX model of a frozen quantized model; ``example`` is one input batch.

    ``opset``: one of ``OPSETS`` (18..21); None takes ``default_opset(qmodel)``, 21 when a
    weight or activation grid has 4 bits or fewer (INT4/UINT4 containers), else 18. Opset 18
    holds every grid in an 8-bit type, for runtimes without opset 21.
    The graph input is ``input`` with a dynamic first dimension ``batch``; the output is
    ``logits`` for a model returning one tensor, one output per key for a dict of tensors.
    ``metadata_props`` record the input's preprocessing and the class count (see
    ``export.metadata``) from ``meta`` (a checkpoint's meta), else from the model's
    ``preprocessing`` / ``output_classes`` attributes, else the input shape of ``example``.
    The model is left as it was (forwards, train/eval mode)."""
    opset = default_opset(qmodel) if opset is None else check_opset(opset)
    if not isinstance(example, Tensor) or example.dim() < 1:
        raise OnnxExportError("the example input must be a tensor with a batch dimension")
    entries = onnx_metadata(export_meta(meta, qmodel, example), INPUT_NAME)
    try:
        device = next(qmodel.parameters()).device
    except StopIteration:
        device = example.device
    example = _batch_example(example.to(device))
    table = _translation_table()
    with _export_forwards(qmodel) as layers:
        with torch.no_grad():
            names = _output_names(qmodel, qmodel(example))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    qmodel, (example,), dynamo=True, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=names,
                    dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},),
                    custom_translation_table=table, verbose=False, report=False,
                )
        except OnnxExportError:
            raise
        except Exception as exc:  # every torch.onnx failure is one user problem
            raise OnnxExportError(_failure(qmodel, exc)) from exc
        proto = program.model_proto
        written = {o.domain: o.version for o in proto.opset_import}.get("", None)
        if written != opset:
            raise OnnxExportError(
                f"torch.onnx wrote {type(qmodel).__name__} at opset {written}, not the "
                f"requested {opset} (its version converter failed): export with opset={OPSET}"
            )
        _expand_markers(proto, layers, opset)
    proto.graph.name = "attnround_pl_qdq"
    proto.producer_name = "attnround-pl"
    set_onnx_metadata(proto, entries)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(
    qmodel: nn.Module, example: Tensor, path: str | os.PathLike,
    meta: Mapping[str, Any] | None = None, opset: int | None = None,
) -> Path:
    """Write the QDQ ONNX model of ``qmodel`` to ``path`` (checked by onnx.checker);
    ``meta``: what ``to_onnx`` records in its ``metadata_props``; ``opset``: see ``to_onnx``
    (None: ``default_opset``)."""
    model = to_onnx(qmodel, example, meta, opset)
    return write_atomically(path, lambda tmp: onnx.save_model(model, str(tmp)))
