"""The quantized checkpoint of a calibrated model: one ``torch.save`` file.

Layout (``format = "attnround-pl/quantized/1"``)::

    {"format": ..., "quant": QuantConfig as a dict, "meta": {... free-form: model, data ...},
     "layers": {name: {"codes": uint8/int8 tensor (not packed: one code per byte),
                       "scale", "zero_point", "w_bits", "a_bits", "a_step", "a_signed", "bias"}},
     "block_inputs": {block path: [layers reading its input]} (``act_placement="blocks"``,
                     see ``quant.placement``; empty otherwise, missing in earlier files),
     "state_dict": the frozen quantized model's state dict}

``layers`` is the readable summary (integer codes, scales, zero points, bits per layer);
``state_dict`` is what ``load_quantized`` restores bit for bit into a rebuilt model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..quant.config import QuantConfig
from ..quant.errors import QuantConfigError
from ..quant.layers import QuantLayer
from ..quant.model import freeze_model, quant_layers, quantize_model
from ..quant.placement import place_block_inputs
from ..torch_files import UnreadableFile, load_tensors, save_tensors

FORMAT = "attnround-pl/quantized/1"


class CheckpointError(InputError, RuntimeError):
    """A quantized checkpoint is missing, corrupt, or does not fit the model."""


def layer_record(layer: QuantLayer) -> dict[str, Any]:
    """One quantized layer: integer codes, scales, zero points, bits, activation step, bias."""
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    return {
        "codes": wq.integer_codes(layer.layer.weight).cpu(),
        "scale": wq.scale.detach().cpu().flatten().float(),
        "zero_point": wq.zero_point.detach().cpu().flatten().round().to(torch.int32),
        "w_bits": wq.bits,
        "a_bits": aq.bits,
        "a_step": float(aq.step.detach()) if aq.active else None,
        "a_signed": aq.signed,
        "bias": None if layer.layer.bias is None else layer.layer.bias.detach().cpu(),
    }


def layer_summary(qmodel: nn.Module) -> dict[str, dict[str, Any]]:
    """``layer_record`` of every quantized layer, by name."""
    return {name: layer_record(layer) for name, layer in quant_layers(qmodel).items()}


def cpu_state_dict(module: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``module.state_dict()`` on the CPU without the keys starting with ``exclude``, keeping
    its ``_metadata`` (module versions: torchvision's MNASNet refuses to load without them)."""
    state = module.state_dict()
    for key in list(state):
        if exclude and key.startswith(exclude):
            del state[key]
        elif isinstance(state[key], torch.Tensor):
            state[key] = state[key].cpu()
    return state


def save_quantized(
    qmodel: nn.Module, path: str | os.PathLike, quant: QuantConfig, meta: dict[str, Any]
) -> Path:
    """Write the checkpoint to a temporary file, then rename it into place."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "quant": quant.to_dict(),
        "meta": meta,
        "layers": layer_summary(qmodel),
        "block_inputs": dict(getattr(qmodel, "block_inputs", {})),
        "state_dict": cpu_state_dict(qmodel),
    }
    return save_tensors(payload, path)


def read_payload(path: str | os.PathLike, fmt: str, what: str) -> dict[str, Any]:
    """Load a ``torch.save`` dict of format ``fmt``; any problem is one CheckpointError."""
    path = Path(path)
    try:
        payload = load_tensors(path)
    except UnreadableFile as exc:
        raise CheckpointError(f"{what} {path} {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not an attnround-pl {what} ({fmt})")
    return payload


def read_quantized(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a checkpoint file; every problem becomes one CheckpointError."""
    return read_payload(path, FORMAT, "quantized checkpoint")


def nearest_rebuild_config(quant: dict[str, Any], layer_bits: dict[str, int]) -> QuantConfig:
    """The config that rebuilds a saved model's layers: saved per-layer bits (a mixed-precision
    allocation is not searched again), nearest rounding (every code comes from the file). The
    saved settings are read by ``QuantConfig.from_dict`` (keys of earlier versions included;
    gone ones are dropped while they hold their off value)."""
    try:
        config = QuantConfig.from_dict(quant)
    except QuantConfigError as exc:
        raise CheckpointError(f"the file was made with {exc}") from None
    return dataclasses.replace(
        config, rounding="nearest", rounding_args=None, layer_w_bits=layer_bits
    )


def restore_block_inputs(qmodel: nn.Module, block_inputs: dict[str, list[str]] | None
                         ) -> None:
    """Give a rebuilt model the block input quantizers a saved one had
    (``act_placement="blocks"``: {block path: layers reading its input}, see
    ``quant.placement``); their steps come from the file after."""
    if not block_inputs:
        return
    try:
        place_block_inputs(qmodel, block_inputs)
    except (AttributeError, QuantConfigError) as exc:  # a path the model does not have
        raise CheckpointError(f"the file's block input quantizers do not fit the model: {exc}"
                              ) from None


def load_quantized(
    path: str | os.PathLike, build_float: Callable[[dict[str, Any]], nn.Module]
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the frozen quantized model of a checkpoint.

    ``build_float(meta)`` returns the float architecture (its weights do not matter: every
    quantized tensor comes from the checkpoint). Returns the model and the checkpoint payload.
    """
    payload = read_quantized(path)
    # The bits each layer ended with; a mixed-precision allocation is not recomputed.
    layer_bits = {name: info["w_bits"] for name, info in payload["layers"].items()}
    quant = nearest_rebuild_config(payload["quant"], layer_bits)
    qmodel = quantize_model(build_float(payload["meta"]), quant, search_scales=False)
    restore_block_inputs(qmodel, payload.get("block_inputs"))
    freeze_model(qmodel)
    try:
        qmodel.load_state_dict(payload["state_dict"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"quantized checkpoint {path} does not fit the model: {exc}"
        ) from None
    return qmodel.eval(), payload
