"""The deployment state file: integer weights and quantizer parameters, no float weights.

Layout (``format = "attnround-pl/state/1"``, one ``torch.save`` dict, loadable with
``weights_only=True``)::

    {"format", "quant": QuantConfig as a dict,
     "meta": {"arch", "num_classes", "preprocessing", ...} (see ``export.metadata``),
     "layers": {name: {
        "kind": "conv" | "linear",
        "codes": integer weight codes, one code per byte (not packed): uint8 in 0..2^b-1 for the
                 asymmetric grid (the default), int8 in -2^(b-1)..2^(b-1)-1 for the symmetric one,
        "w_bits", "w_signed", "per_channel",
        "scale": float32 [out_channels] (or [1]), "zero_point": int32, same shape
                 (weight = scale * (codes - zero_point), per output channel),
        "bias": float32 or None,
        "a_bits" (32 = float input), "a_signed", "a_step": float or None
                 (input = a_step * clip(round(x / a_step), qmin, qmax)),
        "border": None or {"slope": 1 - k, "offset": c} per input channel, the folded AQuant
                 border: codes = round(slope * x~ - offset),
        "border_params": the border's raw learned parameters (what ``load_state`` restores)}},
     "other": float tensors of the model outside quantized layers (e.g. unfolded norms)}

``load_state`` rebuilds the fake-quantized model from it; its outputs equal the calibrated
model's bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..quant import QuantConfig, QuantLayer, QuantLinear, freeze_model
from ..quant.model import quant_layers, quantize_model
from ..torch_files import save_tensors
from .checkpoint import (
    CheckpointError,
    cpu_state_dict,
    layer_record,
    nearest_rebuild_config,
    read_payload,
)
from .metadata import export_meta

STATE_FORMAT = "attnround-pl/state/1"


def _layer_state(layer: QuantLayer) -> dict[str, Any]:
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    border = None
    if aq.border is not None:
        k, c = aq.border.effective()
        border = {"slope": (1 - k).detach().cpu(), "offset": c.detach().cpu()}
    return {
        **layer_record(layer),
        "kind": "linear" if isinstance(layer, QuantLinear) else "conv",
        "w_signed": wq.grid.signed,
        "per_channel": wq.per_channel,
        "border": border,
        "border_params": None if aq.border is None else {
            k: v.detach().cpu() for k, v in aq.border.state_dict().items()},
    }


def state_payload(qmodel: nn.Module, quant: QuantConfig | dict, meta: dict[str, Any]) -> dict:
    """The state dict-of-tensors of a frozen quantized model (see the module docstring)."""
    layers = quant_layers(qmodel)
    not_frozen = [n for n, m in layers.items() if not m.weight_quantizer.frozen]
    if not_frozen:
        raise CheckpointError(f"layers {not_frozen[:3]} are not frozen: call freeze_model first")
    other = cpu_state_dict(qmodel, exclude=tuple(f"{name}." for name in layers))
    quant = quant.to_dict() if isinstance(quant, QuantConfig) else dict(quant)
    return {
        "format": STATE_FORMAT,
        "quant": quant,
        "meta": export_meta(meta, qmodel),
        "layers": {name: _layer_state(layer) for name, layer in layers.items()},
        "other": other,
    }


def export_state(
    qmodel: nn.Module, path: str | os.PathLike, quant: QuantConfig | dict, meta: dict[str, Any]
) -> Path:
    """Write the state file (to a temporary name, then renamed into place)."""
    payload = state_payload(qmodel, quant, meta)
    return save_tensors(payload, path)


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    return read_payload(path, STATE_FORMAT, "quantized state file")


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
        aq.signed = info["a_signed"]
        aq.step.data = torch.tensor(info["a_step"], dtype=aq.step.dtype, device=device)
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
