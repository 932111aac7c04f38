"""Model zoo: the two embedded Fashion-MNIST models and five torchvision ImageNet models.

Weights:
- ``weights="DEFAULT"``: the embedded models load their committed checkpoint; torchvision models
  load torchvision's default ImageNet weights from torchvision's cache
  (``$TORCH_HOME/hub/checkpoints``), never from the network: with no cached file the error says
  where to put it.
- ``weights=None``: random initialisation (tests, plumbing).
- ``checkpoint=<path>``: a state dict file (or a dict holding one under ``state_dict`` /
  ``model``), which wins over ``weights``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.regnet import BlockParams, RegNet

from ..errors import InputError
from ..torch_files import UnreadableFile, load_tensors
from .fmnist_nets import mobilenetv2_small, resnet20

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
EMBEDDED: dict[str, Callable[[int], nn.Module]] = {
    "resnet20": resnet20,
    "mobilenetv2": mobilenetv2_small,
}
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2", "regnet_x_600mf", "mnasnet1_0")


class ModelLoadError(InputError, RuntimeError):
    """A model could not be built or its weights could not be loaded; the message says why."""


def available_models() -> list[str]:
    return sorted(EMBEDDED) + list(TORCHVISION)


def embedded_checkpoint(arch: str) -> Path:
    return CHECKPOINT_DIR / f"{arch}_fmnist.pt"


def embedded_info(arch: str) -> dict:
    """Training record of an embedded model (float test top-1, epochs, command, machine)."""
    path = CHECKPOINT_DIR / f"{arch}_fmnist.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"checkpoint {path} does not hold a state dict of tensors")
    prefixes = ("net.", "model.", "module.")
    for prefix in prefixes:
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model: nn.Module, path: str | os.PathLike, arch: str) -> nn.Module:
    """Load a state dict file into ``model``; every problem becomes one ModelLoadError."""
    path = Path(path)
    try:
        obj = load_tensors(path)
    except UnreadableFile as exc:
        raise ModelLoadError(f"checkpoint {path} {exc}") from exc
    state = _extract_state_dict(obj, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "",
                f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
                if unexpected
                else "",
                f"wrong shapes {wrong[:3]}" if wrong else "",
            )
            if part
        )
        raise ModelLoadError(f"checkpoint {path} does not match architecture {arch!r}: {details}")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelLoadError(f"checkpoint {path}: tensor {name!r} contains NaN or Inf")
    model.load_state_dict(state)
    return model


def regnet_x_600mf(num_classes: int = 1000) -> nn.Module:
    """RegNetX-600MF (Radosavovic et al. 2020; pycls's parameters) on torchvision's RegNet class.

    torchvision ships RegNetX 400MF and 800MF but not 600MF, the one the paper and BRECQ use;
    it has no torchvision weights, so pretrained weights come from ``checkpoint``.
    """
    params = BlockParams.from_init_params(depth=16, w_0=48, w_a=36.97, w_m=2.24, group_width=24)
    return RegNet(params, num_classes=num_classes)


def _torchvision_model(arch: str, num_classes: int) -> nn.Module:
    if arch == "regnet_x_600mf":
        return regnet_x_600mf(num_classes)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _torchvision_weights(arch: str, weights: str) -> nn.Module:
    if arch == "regnet_x_600mf":
        raise ModelLoadError(
            "torchvision has no regnet_x_600mf weights: set model.checkpoint to a state dict "
            "in torchvision's RegNet layout, or weights: null for random weights"
        )
    enum = torchvision.models.get_model_weights(arch)
    try:
        spec = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ModelLoadError(f"unknown weights {weights!r} for {arch}; valid: {names}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.url)
    if not cached.is_file():
        raise ModelLoadError(
            f"{arch} weights {spec} are not in torchvision's cache and cannot be downloaded "
            f"here. Put the file {os.path.basename(spec.url)} at {cached} (from {spec.url}), "
            "or set model.checkpoint to a state dict file, or weights: null for random weights."
        )
    return load_checkpoint(_torchvision_model(arch, 1000), cached, arch)


def build_model(
    arch: str,
    weights: str | None = "DEFAULT",
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Build ``arch`` in eval mode with the requested weights (see the module docstring)."""
    if arch in EMBEDDED:
        if weights not in (None, "DEFAULT"):
            raise ModelLoadError(
                f"weights {weights!r} for {arch}: the embedded models take weights 'DEFAULT' "
                "(their committed checkpoint) or null (random); a weights file goes in "
                "model.checkpoint"
            )
        model = EMBEDDED[arch](num_classes or 10)
        if checkpoint is None and weights is not None:
            checkpoint = embedded_checkpoint(arch)
    elif arch in TORCHVISION:
        if checkpoint is None and weights is not None:
            if num_classes not in (None, 1000):
                raise ModelLoadError(
                    f"ImageNet weights for {arch} have 1000 classes, not {num_classes}"
                )
            return _torchvision_weights(arch, weights).eval()
        model = _torchvision_model(arch, num_classes or 1000)
    else:
        raise ModelLoadError(f"unknown model {arch!r}; available: {', '.join(available_models())}")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, arch)
    return model.eval()
