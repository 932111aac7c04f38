"""Run an exported ONNX model in onnxruntime beside the PyTorch model and compare predictions.

Every output is compared (one tensor, ``logits``, or each entry of a dict); top-1 and argmax
agreement only when the batches have labels and the model returns ``(N, classes)`` logits.
When the two disagree, ``first_code_divergence`` says why: it compares the integer codes of
every activation quantizer (PyTorch's rounding against the graph's QuantizeLinear outputs), in
graph order, and reports the first quantizer where they differ and how far PyTorch's value sat
from a rounding tie there. A few millionths of a step is float noise (the convolutions sum in
another order and a value at ``n + 0.5`` takes the other code); beyond ``TIE_TOLERANCE`` it is
an export fault.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from torch import Tensor, nn

from ..errors import SettingError
from ..quant import ActQuantizer, QuantLayer
from ..quant.placement import block_input_quantizers
from .qdq_onnx import INPUT_NAME, OUTPUT_NAME, onnx_name

TIE_TOLERANCE = 1e-3  # step units: closer to a tie than this, a flipped code is float noise
DIAGNOSED_IMAGES = 8  # the images with the largest output differences get the code comparison


@dataclass
class CodeDivergence:
    """The first activation quantizer, in graph order, whose codes differ between the models.

    ``max_tie_distance`` is the largest ``| frac(v) - 0.5 |`` over the differing elements, ``v``
    PyTorch's value before rounding in step units (with an AQuant border, its folded form
    ``(1 - k) x~ - c``). ``float_noise``: every differing code sat within ``TIE_TOLERANCE`` of
    a tie."""

    layer: str
    index: int
    quantizers: int
    differing: int
    elements: int
    max_tie_distance: float
    float_noise: bool

    def explain(self) -> str:
        where = (
            f"first differing activation codes: input of '{self.layer}' (quantizer "
            f"{self.index + 1} of {self.quantizers}), {self.differing} of {self.elements}"
        )
        if self.float_noise:
            close = (
                "all exactly on a rounding tie (x/s = n + 0.5)"
                if self.max_tie_distance == 0
                else f"all within {self.max_tie_distance:.2g} step of a rounding tie"
            )
            return f"{where}, {close}: float noise in the accumulation order, not an export fault"
        return (
            f"{where}, up to {self.max_tie_distance:.2g} step from a rounding tie: "
            "the exported graph computes something else there (an export fault)"
        )


@dataclass
class Comparison:
    """Both models on the same images: their top-1 (percent) and how their outputs differ.

    ``max_abs_logit_diff``: the largest absolute difference over every output (the logits of a
    classifier); ``max_abs_diff``: the same per graph output (``logits``, or a dict model's
    keys). ``torch_top1`` / ``onnx_top1`` / ``argmax_mismatch`` are None unless every batch had
    labels and the model returns one ``(N, classes)`` tensor. ``divergence``: where the
    activation codes first differ on the images whose outputs differ most (None when every
    code agrees, or the outputs are equal)."""

    images: int
    torch_top1: float | None
    onnx_top1: float | None
    argmax_mismatch: int | None
    max_abs_logit_diff: float
    divergence: CodeDivergence | None = None
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


IMAGE_KEYS = ("image", "images", "input")
LABEL_KEYS = ("label", "labels", "target", "targets")


def batch_images(batch: Any) -> tuple[Tensor, Tensor | None]:
    """(images, labels or None) of one batch: a bare tensor (no labels), a tuple/list (images
    first, labels second) or a dict (images under "image"/"images"/"input", labels under
    "label"/"labels"/"target"/"targets"). Labels count only as an integer tensor of shape
    ``(N,)`` that is not all negative (-1 marks an unlabelled image)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        images, labels = batch[0], (batch[1] if len(batch) > 1 else None)
    elif isinstance(batch, Mapping) and any(isinstance(batch.get(k), Tensor) for k in IMAGE_KEYS):
        images = next(batch[k] for k in IMAGE_KEYS if isinstance(batch.get(k), Tensor))
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    else:
        raise SettingError(
            f"a batch is a {type(batch).__name__}: expected an image tensor, (images, labels) "
            "or a dict with the images under 'image'/'images'/'input'"
        )
    labelled = (isinstance(labels, Tensor) and not labels.is_floating_point()
                and labels.dtype != torch.bool and tuple(labels.shape) == (len(images),)
                and not bool((labels < 0).all()))
    return images, labels if labelled else None


# onnxruntime's session option that makes its fused int8 kernels (QLinearConv, QGemm) on x86
# multiply in int16 instead of VPMADDUBSW's saturating u8 x s8 pairs (onnxruntime PR #12088)
EXACT_INT8_OPTION = "session.x64quantprecision"


def onnx_session(
    path_or_model: str | os.PathLike | onnx.ModelProto, exact_int8: bool = True,
) -> ort.InferenceSession:
    """A CPU onnxruntime session with the default graph optimizations (what a deployment gets).

    ``exact_int8`` (default) sets ``EXACT_INT8_OPTION``: on an x86 CPU without VNNI (AVX2
    only), onnxruntime's fused int8 convolutions and matrix products add pairs of u8 x s8
    products into int16 with saturation, so the same file gives other outputs on such a host
    (up to 0.2 on the logits of a W8A8 test net) than the ONNX operators define and than a
    VNNI host computes; with the option every x86 host computes the operators' exact integer
    arithmetic, which is what the export is verified against. False: onnxruntime's defaults."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if exact_int8:
        options.add_session_config_entry(EXACT_INT8_OPTION, "1")
    source = (path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto)
              else str(path_or_model))
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: Tensor, outputs: list[str] | None = None) -> list:
    return session.run(outputs, {INPUT_NAME: x.detach().cpu().numpy().astype(np.float32)})


def named_outputs(out: Any) -> dict[str, Tensor]:
    """A model's output by graph output name: ``logits`` for one tensor, else the dict."""
    if isinstance(out, Tensor):
        return {OUTPUT_NAME: out}
    if isinstance(out, Mapping) and all(isinstance(v, Tensor) for v in out.values()):
        return dict(out)
    raise SettingError(
        f"the model returned a {type(out).__name__}: only a tensor or a dict of tensors compares"
    )


def _row_diff(ref: Tensor, got: Tensor) -> Tensor:
    """Largest absolute difference per image (first dimension) of two outputs."""
    return (ref.float() - got.float()).abs().reshape(len(ref), -1).amax(1)


@torch.no_grad()
def compare_with_onnx(
    qmodel: nn.Module, onnx_path: str | os.PathLike, batches: Iterable[Any]
) -> Comparison:
    """Run ``qmodel`` (PyTorch) and the ONNX file on the same batches (bare image tensors or
    (images, labels), see ``batch_images``) and compare every output; where they differ, run
    ``first_code_divergence`` on the batch holding the largest difference, for its (up to
    ``DIAGNOSED_IMAGES``) images that differ most."""
    session = onnx_session(onnx_path)
    graph_outputs = [o.name for o in session.get_outputs()]
    device = next(qmodel.parameters()).device
    qmodel = qmodel.eval()
    images = torch_correct = onnx_correct = mismatch = 0
    classify = True  # labels on every batch and one (N, classes) output
    per_output: dict[str, float] = {}
    max_diff, worst_x, worst_rows = 0.0, None, None
    for batch in batches:
        x, y = batch_images(batch)
        refs = {k: v.float().cpu() for k, v in named_outputs(qmodel(x.to(device))).items()}
        missing = [k for k in refs if k not in graph_outputs]
        if missing:
            raise SettingError(
                f"{onnx_path} has no output {missing[0]!r} (its outputs: "
                f"{', '.join(graph_outputs)}): it was not exported from this model"
            )
        names = list(refs)
        gots = dict(zip(names, (torch.from_numpy(a) for a in _run(session, x, names)), strict=True))
        images += len(x)
        rows = torch.zeros(len(x))
        for k in names:
            diff = _row_diff(refs[k], gots[k])
            per_output[k] = max(per_output.get(k, 0.0), float(diff.max()))
            rows = torch.maximum(rows, diff)
        ref = refs.get(OUTPUT_NAME)
        classify = classify and y is not None and len(refs) == 1 and ref is not None
        classify = classify and ref.dim() == 2
        if classify:
            got, y = gots[OUTPUT_NAME], y.cpu()
            torch_correct += int((ref.argmax(1) == y).sum())
            onnx_correct += int((got.argmax(1) == y).sum())
            mismatch += int((ref.argmax(1) != got.argmax(1)).sum())
        if float(rows.max()) > max_diff:
            max_diff, worst_x = float(rows.max()), x.cpu()
            top = rows.topk(min(DIAGNOSED_IMAGES, len(rows)))
            worst_rows = top.indices[top.values > 0]
    if images == 0:
        raise SettingError("no images to compare the ONNX model on")
    divergence = None
    if worst_x is not None:
        divergence = first_code_divergence(qmodel, onnx_path, worst_x, worst_rows)
    return Comparison(
        images=images,
        torch_top1=100.0 * torch_correct / images if classify else None,
        onnx_top1=100.0 * onnx_correct / images if classify else None,
        argmax_mismatch=mismatch if classify else None,
        max_abs_logit_diff=max_diff,
        divergence=divergence,
        max_abs_diff=per_output,
    )


def _onnx_quant_name(layer: str) -> str:
    """The name of the QuantizeLinear node ``qdq_onnx`` writes for a layer's input quantizer."""
    return onnx_name(f"{layer}.a_quant")


@torch.no_grad()
def _torch_codes(aq: ActQuantizer, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """(codes, value before rounding in step units) of one activation quantizer, from its input
    and output."""
    grid = aq.grid
    v = torch.clamp(x / aq.step, grid.qmin, grid.qmax)
    if aq.border is not None:
        v = aq.border.folded_value(v)
    return torch.round(out / aq.step), v


# element types onnxruntime's Python API cannot return ("No corresponding Numpy type for Tensor
# Type. UInt4x2"): a QuantizeLinear output of these types is read through a Cast to float
_NO_NUMPY_TYPE = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


def _readable_codes(model: onnx.ModelProto, q: onnx.NodeProto, types: dict[str, int]) -> str:
    """The name under which onnxruntime returns the codes of the QuantizeLinear ``q``: its
    output, or for a 4-bit one (opset 21) a Cast of it to float appended to ``model``
    (``types``: the element type of each initializer, the zero point's among them)."""
    zero = q.input[2] if len(q.input) > 2 else ""
    if types.get(zero) not in _NO_NUMPY_TYPE:
        return q.output[0]
    out = f"{q.output[0]}_codes"
    model.graph.node.append(
        helper.make_node("Cast", [q.output[0]], [out], name=out, to=onnx.TensorProto.FLOAT)
    )
    return out


@torch.no_grad()
def first_code_divergence(
    qmodel: nn.Module, onnx_path: str | os.PathLike, x: Tensor, rows: Tensor | None = None
) -> CodeDivergence | None:
    """Compare every exported activation quantizer's codes, PyTorch against onnxruntime, in
    graph order, on the images ``x[rows]`` (all of ``x`` without ``rows``); the first quantizer
    where they differ, or None.

    PyTorch runs on the whole batch ``x``, as the comparison ran it: its CPU convolutions can
    round differently with the batch size (a MobileNetV2 image's logits moved by 0.14 between
    its batch of 500 and alone, through one code at a tie), so a re-run of the rows alone could
    hide the difference being explained. onnxruntime runs on the rows only (it gave the same
    logits for a batch of 10,000 and the same images in 8). The file must come from
    ``export_onnx`` of this model, at any opset: its QuantizeLinear nodes are found by the names
    it gives them, and a 4-bit one's codes (opset 21) read through a Cast to float.
    """
    qmodel = qmodel.eval()
    rows = torch.arange(len(x)) if rows is None else rows.cpu()
    model = onnx.load(str(onnx_path))
    types = {t.name: t.data_type for t in model.graph.initializer}
    quants = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type == "QuantizeLinear"]
    order = {n.name: (i, _readable_codes(model, n, types)) for i, n in quants}
    quantizers = [(name, m.input_quantizer) for name, m in qmodel.named_modules()
                  if isinstance(m, QuantLayer)]
    quantizers += list(block_input_quantizers(qmodel).items())  # act_placement="blocks"
    layers = sorted(((*order[_onnx_quant_name(name)], name, aq) for name, aq in quantizers
                     if _onnx_quant_name(name) in order), key=lambda t: t[0])
    if not layers:
        quantized = [name for name, m in qmodel.named_modules() if isinstance(m, QuantLayer)
                     and m.input_quantizer.active and m.input_quantizer.enabled]
        if quantized:
            raise SettingError(
                f"{onnx_path} has no QuantizeLinear for any of the model's {len(quantized)} "
                f"activation quantizers (e.g. '{_onnx_quant_name(quantized[0])}' for "
                f"'{quantized[0]}'): it was not exported from this model by export_onnx"
            )
        return None
    names = [output for _, output, _, _ in layers]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    onnx_codes = _run(onnx_session(model), x[rows], names)
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def keep_rows(m: ActQuantizer, args: tuple[Tensor], out: Tensor, name: str) -> None:
        on = rows.to(out.device)
        captured[name] = _torch_codes(m, args[0][on], out[on])

    hooks = [aq.register_forward_hook(lambda m, a, out, name=name: keep_rows(m, a, out, name))
             for _, _, name, aq in layers]
    try:
        qmodel(x.to(next(qmodel.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    for index, ((_, _, name, _), other) in enumerate(zip(layers, onnx_codes, strict=True)):
        if name not in captured:
            continue
        codes, v = captured[name]
        other = torch.from_numpy(other.astype(np.float32))
        differ = codes.cpu() != other
        if differ.any():
            v = v.cpu()[differ]
            distance = float(((v - torch.floor(v)) - 0.5).abs().max())
            return CodeDivergence(layer=name, index=index, quantizers=len(layers),
                                  differing=int(differ.sum()), elements=differ.numel(),
                                  max_tie_distance=distance,
                                  float_noise=distance < TIE_TOLERANCE)
    return None


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, batches: Iterable[Any]) -> tuple[int, float]:
    """(images, largest absolute output difference over every output) of two models on the
    same batches (as ``compare_with_onnx`` takes them)."""
    device = next(a.parameters()).device
    images, diff = 0, 0.0
    for batch in batches:
        x = batch_images(batch)[0].to(device)
        outs_a, outs_b = named_outputs(a.eval()(x)), named_outputs(b.eval()(x))
        if outs_a.keys() != outs_b.keys():
            raise SettingError(
                f"the models return different outputs: {list(outs_a)}, {list(outs_b)}"
            )
        for k, v in outs_a.items():
            diff = max(diff, float((v - outs_b[k]).abs().max()))
        images += len(x)
    return images, diff
