"""The deployment state file: safetensors with packed integer weight codes, no float weights.

Format ``attnround-pl/state/2`` (``STATE_FORMAT``), a ``.safetensors`` file that any safetensors
reader opens (or a few lines of numpy, see docs/export.md): its ``__metadata__`` holds
``"format"`` and ``"attnround_pl"``, a JSON header::

    {"format": "attnround-pl/state/2", "code_layout": "lsb-first",
     "quant": QuantConfig as a dict, "meta": {"arch", "num_classes", "preprocessing", ...}
     (see ``export.metadata``),
     "layers": {name: {"kind": "conv" | "linear", "shape": the weight's shape,
                       "w_bits", "w_signed", "per_channel", "a_bits" (32: float input),
                       "a_signed", "a_step" (float or null), "bias", "border" (bools),
                       "border_params": the raw AQuant parameters' names}},
     "block_inputs": {block path: {"consumers": layers reading its input, "a_bits",
                      "a_signed", "a_step", "border", "border_params"}} (``act_placement=
                      "blocks"``: the block quantizes its input once, see ``quant.placement``;
                      its consumers have ``a_bits`` 32), empty otherwise,
     "other": names of the float tensors outside quantized layers (unfolded norms),
     "module_versions": {module path: {"version": n}} (what their loaders check)}

and its tensors, per quantized layer ``name``:

- ``{name}.weight_codes``: uint8, the weight's integer codes packed ``w_bits`` bits each in
  the ``packing.LAYOUT`` bit stream (C order over ``shape``; a signed grid in two's
  complement), ``ceil(numel * w_bits / 8)`` bytes;
- ``{name}.weight_scale`` float32 and ``{name}.weight_zero_point`` int32, ``[out_channels]``
  (or ``[1]``): ``weight = scale * (code - zero_point)`` along axis 0;
- ``{name}.bias`` float32 when the layer has one;
- ``{name}.border_slope`` / ``{name}.border_offset`` float32 per input channel, AQuant's folded
  border (``codes = round(slope * x / a_step - offset)``), and ``{name}.border.{param}``, its
  raw learned parameters (what ``load_state`` restores);

a block input quantizer's border as ``{block}.input_border_slope``, ``..._offset`` and
``{block}.input_border.{param}``; plus the ``other`` tensors under their state-dict names. A
grid is unsigned ``[0, 2^b - 1]`` (the asymmetric default) or signed ``[-2^(b-1), 2^(b-1) -
1]``; an input quantizer maps ``x`` to ``a_step * clip(round(x / a_step), qmin, qmax)``.

``read_state`` and ``load_state`` also read format ``attnround-pl/state/1``, the ``torch.save``
dict of earlier versions (one code per byte); ``load_state`` rebuilds the fake-quantized model,
whose outputs equal the calibrated model's bit for bit.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import write_bytes
from ..quant import ActQuantizer, QuantConfig, QuantLayer, QuantLinear, freeze_model
from ..quant.model import quant_layers, quantize_model
from .checkpoint import (
    CheckpointError,
    cpu_state_dict,
    layer_record,
    nearest_rebuild_config,
    read_payload,
    restore_block_inputs,
)
from .metadata import export_meta
from .packing import LAYOUT, pack_codes, unpack_codes

STATE_FORMAT = "attnround-pl/state/2"
TORCH_STATE_FORMAT = "attnround-pl/state/1"  # earlier versions' torch.save dict: still read
HEADER_KEY = "attnround_pl"  # the safetensors __metadata__ entry holding the JSON header
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save files are zip archives


def _border_state(aq: ActQuantizer) -> dict[str, Any]:
    """An input quantizer's AQuant border: folded and raw (None, None without one)."""
    if aq.border is None:
        return {"border": None, "border_params": None}
    k, c = aq.border.effective()
    return {"border": {"slope": (1 - k).detach().cpu(), "offset": c.detach().cpu()},
            "border_params": {k: v.detach().cpu() for k, v in aq.border.state_dict().items()}}


def _layer_state(layer: QuantLayer) -> dict[str, Any]:
    wq = layer.weight_quantizer
    return {
        **layer_record(layer),
        "kind": "linear" if isinstance(layer, QuantLinear) else "conv",
        "w_signed": wq.grid.signed,
        "per_channel": wq.per_channel,
        **_border_state(layer.input_quantizer),
    }


def _block_input_state(qmodel: nn.Module, path: str, consumers: list[str]) -> dict[str, Any]:
    aq = qmodel.get_submodule(path).input_quantizer
    return {"consumers": list(consumers), "a_bits": aq.bits, "a_signed": aq.signed,
            "a_step": float(aq.step.detach()), **_border_state(aq)}


def state_payload(qmodel: nn.Module, quant: QuantConfig | dict, meta: dict[str, Any]) -> dict:
    """What the state file holds, in memory: ``{"format", "quant", "meta", "layers": {name:
    {"codes" (unpacked: uint8 / int8 of the weight's shape), "scale", "zero_point", "bias",
    "w_bits", "w_signed", "per_channel", "a_bits", "a_signed", "a_step", "kind", "border":
    {"slope", "offset"} or None, "border_params"}}, "other": state dict}``; ``read_state``
    returns the same from a file."""
    layers = quant_layers(qmodel)
    not_frozen = [n for n, m in layers.items() if not m.weight_quantizer.frozen]
    if not_frozen:
        raise CheckpointError(f"layers {not_frozen[:3]} are not frozen: call freeze_model first")
    blocks = dict(getattr(qmodel, "block_inputs", {}))
    other = cpu_state_dict(qmodel, exclude=tuple(f"{name}." for name in layers)
                           + tuple(f"{path}.input_quantizer." for path in blocks))
    quant = quant.to_dict() if isinstance(quant, QuantConfig) else dict(quant)
    return {
        "format": STATE_FORMAT,
        "quant": quant,
        "meta": export_meta(meta, qmodel),
        "layers": {name: _layer_state(layer) for name, layer in layers.items()},
        "block_inputs": {path: _block_input_state(qmodel, path, consumers)
                         for path, consumers in blocks.items()},
        "other": other,
    }


def _contiguous(t: Tensor) -> Tensor:
    return t.detach().cpu().contiguous().clone()  # safetensors refuses shared storage


def _border_tensors(prefix: str, info: dict[str, Any]) -> dict[str, Tensor]:
    """``{prefix}border_slope``, ``{prefix}border_offset``, ``{prefix}border.{param}``."""
    tensors = {}
    if info["border"] is not None:
        tensors[f"{prefix}border_slope"] = _contiguous(info["border"]["slope"]).float()
        tensors[f"{prefix}border_offset"] = _contiguous(info["border"]["offset"]).float()
    for key, value in (info["border_params"] or {}).items():
        tensors[f"{prefix}border.{key}"] = _contiguous(value)
    return tensors


def _layer_tensors(name: str, info: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """One layer's tensors (codes packed) and its header entry."""
    codes = info["codes"]
    packed = pack_codes(codes.numpy(), info["w_bits"], info["w_signed"])
    tensors = {
        f"{name}.weight_codes": torch.from_numpy(packed),
        f"{name}.weight_scale": _contiguous(info["scale"]).float(),
        f"{name}.weight_zero_point": _contiguous(info["zero_point"]).to(torch.int32),
    }
    if info["bias"] is not None:
        tensors[f"{name}.bias"] = _contiguous(info["bias"]).float()
    tensors.update(_border_tensors(f"{name}.", info))
    header = {
        "kind": info["kind"], "shape": list(codes.shape), "w_bits": info["w_bits"],
        "w_signed": info["w_signed"], "per_channel": info["per_channel"],
        "bias": info["bias"] is not None, **_input_header(info),
    }
    return tensors, header


_INPUT_KEYS = ("a_bits", "a_signed", "a_step")  # an input quantizer's, beside its border


def _input_header(info: dict[str, Any]) -> dict[str, Any]:
    """An input quantizer's header entries: bits, signedness, step, whether it has a border
    and the names of the border's raw parameters."""
    return {**{k: info[k] for k in _INPUT_KEYS}, "border": info["border"] is not None,
            "border_params": list(info["border_params"] or {})}


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the state file's header cannot hold the {what}: {exc}") from None


def state_bytes(payload: dict[str, Any]) -> bytes:
    """The safetensors bytes of a ``state_payload``."""
    from safetensors.torch import save  # imported when a state file is written only

    tensors: dict[str, Tensor] = {}
    layers = {}
    for name, info in payload["layers"].items():
        layer_tensors, layers[name] = _layer_tensors(name, info)
        tensors.update(layer_tensors)
    blocks = {}
    for path, info in payload.get("block_inputs", {}).items():
        tensors.update(_border_tensors(f"{path}.input_", info))
        blocks[path] = {"consumers": info["consumers"], **_input_header(info)}
    other = payload["other"]
    clash = sorted(set(other) & set(tensors))
    if clash:
        raise CheckpointError(f"state tensors {clash[:3]} are named like a quantized layer's")
    tensors.update({key: _contiguous(value) for key, value in other.items()})
    versions = {k: dict(v) for k, v in getattr(other, "_metadata", {}).items() if v}
    header = {
        "format": STATE_FORMAT, "code_layout": LAYOUT, "quant": payload["quant"],
        "meta": payload["meta"], "layers": layers, "block_inputs": blocks, "other": list(other),
        "module_versions": versions,
    }
    return save(tensors, metadata={"format": STATE_FORMAT, HEADER_KEY: _json(header, "header")})


def export_state(
    qmodel: nn.Module, path: str | os.PathLike, quant: QuantConfig | dict, meta: dict[str, Any]
) -> Path:
    """Write the state file (to a temporary name, then renamed into place)."""
    return write_bytes(path, state_bytes(state_payload(qmodel, quant, meta)))


def _border_payload(prefix: str, entry: dict[str, Any], tensors: dict[str, Tensor]
                    ) -> dict[str, Any]:
    if not entry["border"]:
        return {"border": None, "border_params": None}
    return {"border": {"slope": tensors[f"{prefix}border_slope"],
                       "offset": tensors[f"{prefix}border_offset"]},
            "border_params": {k: tensors[f"{prefix}border.{k}"] for k in entry["border_params"]}}


def _layer_payload(name: str, entry: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    shape, bits, signed = entry["shape"], entry["w_bits"], entry["w_signed"]
    count = int(np.prod(shape))
    try:
        codes = unpack_codes(tensors[f"{name}.weight_codes"].numpy(), bits, signed, count)
    except ValueError as exc:
        raise CheckpointError(f"layer '{name}': {exc}") from None
    dtype = torch.int8 if signed else torch.uint8
    return {
        **{k: entry[k] for k in ("kind", "w_bits", "w_signed", "per_channel", *_INPUT_KEYS)},
        "codes": torch.from_numpy(codes).to(dtype).reshape(shape),
        "scale": tensors[f"{name}.weight_scale"],
        "zero_point": tensors[f"{name}.weight_zero_point"],
        "bias": tensors[f"{name}.bias"] if entry["bias"] else None,
        **_border_payload(f"{name}.", entry, tensors),
    }


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # truncated, not safetensors, unreadable: one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"quantized state file {path} is corrupt or not a safetensors "
                              f"file ({reason})") from exc
    fmt = metadata.get("format")
    if fmt != STATE_FORMAT or HEADER_KEY not in metadata:
        if isinstance(fmt, str) and fmt.startswith("attnround-pl/state/"):
            raise CheckpointError(
                f"{path} is a state file of format {fmt}; this version of attnround-pl reads "
                f"{TORCH_STATE_FORMAT} and {STATE_FORMAT}: upgrade attnround-pl to read it")
        raise CheckpointError(f"{path} is not an attnround-pl quantized state file "
                              f"({STATE_FORMAT})")
    try:
        header = json.loads(metadata[HEADER_KEY])
        layout = header["code_layout"]
        if layout != LAYOUT:
            raise CheckpointError(f"{path}: code layout {layout!r} unknown (not {LAYOUT!r})")
        layers = {name: _layer_payload(name, entry, tensors)
                  for name, entry in header["layers"].items()}
        blocks = {path: {**{k: entry[k] for k in ("consumers", *_INPUT_KEYS)},
                         **_border_payload(f"{path}.input_", entry, tensors)}
                  for path, entry in header.get("block_inputs", {}).items()}
        other = OrderedDict((key, tensors[key]) for key in header["other"])
        other._metadata = OrderedDict(header["module_versions"])  # type: ignore[attr-defined]
        return {"format": STATE_FORMAT, "quant": header["quant"], "meta": header["meta"],
                "layers": layers, "block_inputs": blocks, "other": other}
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"quantized state file {path} is corrupt: its header or tensors "
                              f"lack {exc}") from None


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a state file (see ``state_payload``: codes unpacked), of format
    ``STATE_FORMAT`` or the earlier ``TORCH_STATE_FORMAT``; any problem is one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"quantized state file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _ZIP_MAGIC:
        return read_payload(path, TORCH_STATE_FORMAT, "quantized state file")
    return _read_safetensors(path)


def _restore_layer(layer: QuantLayer, name: str, info: dict[str, Any]) -> None:
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    weight = layer.layer.weight
    if (wq.bits, aq.bits) != (info["w_bits"], info["a_bits"]):
        raise CheckpointError(
            f"layer '{name}': the model has W{wq.bits}A{aq.bits}, the state W{info['w_bits']}"
            f"A{info['a_bits']}"
        )
    if (wq.grid.signed, wq.per_channel) != (info["w_signed"], info["per_channel"]):
        grid = ("a symmetric" if info["w_signed"] else "an asymmetric") + " grid"
        raise CheckpointError(f"layer '{name}': {grid} in the state, per-channel="
                              f"{info['per_channel']}; the rebuilt model differs")
    if tuple(info["codes"].shape) != tuple(weight.shape):
        raise CheckpointError(f"layer '{name}': weight shape {tuple(weight.shape)} in the model, "
                              f"{tuple(info['codes'].shape)} in the state")
    device = weight.device
    wq.codes = info["codes"].to(device=device, dtype=wq.code_dtype)
    wq.scale = info["scale"].to(device, wq.scale.dtype).reshape(wq.scale.shape)
    wq.zero_point = info["zero_point"].to(device, wq.zero_point.dtype).reshape(wq.zero_point.shape)
    with torch.no_grad():
        weight.copy_(wq(weight))  # the float weight slot holds the dequantized weight
        if info["bias"] is not None:
            layer.layer.bias.copy_(info["bias"])
    if aq.active:
        _restore_input_quantizer(aq, info)


def _restore_input_quantizer(aq: ActQuantizer, info: dict[str, Any]) -> None:
    aq.signed = info["a_signed"]
    aq.step.data = torch.tensor(info["a_step"], dtype=aq.step.dtype, device=aq.step.device)
    aq.initialised = True
    params = info["border_params"]
    if params is not None:
        aq.border_kind = "aquant"
        aq._make_border(params["k"].numel())
        aq.border.load_state_dict(params)


def load_state(
    path: str | os.PathLike, build_float: Callable[[dict[str, Any]], nn.Module]
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the frozen fake-quantized model of a state file.

    ``build_float(meta)`` returns the float architecture (its weights are not used: every
    quantized layer's tensors come from the file). Returns the model and the payload.
    """
    payload = read_state(path)
    layers = payload["layers"]
    config = nearest_rebuild_config(payload["quant"], {n: i["w_bits"] for n, i in layers.items()})
    qmodel = quantize_model(build_float(payload["meta"]), config, search_scales=False)
    blocks = payload.get("block_inputs", {})
    restore_block_inputs(qmodel, {p: b["consumers"] for p, b in blocks.items()})
    for path, info in blocks.items():
        _restore_input_quantizer(qmodel.get_submodule(path).input_quantizer, info)
    freeze_model(qmodel)
    have = quant_layers(qmodel)
    if set(have) != set(layers):
        missing, extra = sorted(set(layers) - set(have)), sorted(set(have) - set(layers))
        raise CheckpointError(f"state file {path} does not fit the model: layers only in the "
                              f"file {missing[:5]}, only in the model {extra[:5]}")
    for name, info in layers.items():
        _restore_layer(have[name], name, info)
    try:
        result = qmodel.load_state_dict(payload["other"], strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"state file {path} does not fit the model: {exc}") from None
    if result.unexpected_keys:
        raise CheckpointError(f"state file {path} does not fit the model: tensors "
                              f"{result.unexpected_keys[:5]} have no place in it")
    return qmodel.eval(), payload
