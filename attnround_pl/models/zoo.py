"""Model zoo: the two embedded Fashion-MNIST models, RegNetX-600MF, and every torchvision
classification and segmentation CNN by name (``torchvision.models.list_models``).

``TORCHVISION`` lists the five ImageNet models whose block classes the unit registry knows (the
benchmarked ones); every other torchvision CNN gets its units from its traced graph. Vision
transformers and the detection, video and optical-flow models are refused with a message that
says so (``UNSUPPORTED``).

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
TRANSFORMER_FAMILIES = ("vit_", "swin_", "maxvit_")
UNSUPPORTED = {
    "detection": "a detection model (its input is a list of images, its output boxes)",
    "video": "a video model (5-D clips)",
    "optical_flow": "an optical-flow model (two images in, flow fields out)",
    "quantization": "torchvision's own quantized model (build the float one instead)",
}


class ModelLoadError(InputError, RuntimeError):
    """A model could not be built or its weights could not be loaded; the message says why."""


def available_models() -> list[str]:
    """The benchmarked models: the embedded ones and the registry-unit torchvision ones."""
    return sorted(EMBEDDED) + list(TORCHVISION)


def torchvision_models() -> list[str]:
    """Every torchvision classification and segmentation CNN ``build_model`` takes."""
    names = torchvision.models.list_models(module=torchvision.models)
    names += torchvision.models.list_models(module=torchvision.models.segmentation)
    return sorted(n for n in names if not n.startswith(TRANSFORMER_FAMILIES))


def _unsupported(arch: str) -> str | None:
    """Why ``arch`` is refused, or None when it is not a known torchvision name."""
    if arch.startswith(TRANSFORMER_FAMILIES) and arch in torchvision.models.list_models():
        return (
            f"{arch} is a vision transformer: attnround-pl quantizes CNNs (Conv1d/Conv2d/Linear "
            "layers, blocks found by tracing) and does not support the vit, swin and maxvit "
            "families"
        )
    for module, what in UNSUPPORTED.items():
        if arch in torchvision.models.list_models(module=getattr(torchvision.models, module)):
            return (
                f"{arch} is {what}: attnround-pl takes models that map one image batch to a "
                "tensor (or a dict of tensors)"
            )
    return None


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
    return obj


def _strip_wrapper_prefix(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """A state dict saved from a wrapper (a LightningModule's ``net.``/``model.``, DDP's
    ``module.``) with that prefix dropped, when the keys do not match ``own`` as they are."""
    if set(state) == own:
        return state
    for prefix in ("net.", "model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(model: nn.Module, path: str | os.PathLike, arch: str) -> nn.Module:
    """Load a state dict file into ``model``; every problem becomes one ModelLoadError."""
    path = Path(path)
    try:
        obj = load_tensors(path)
    except UnreadableFile as exc:
        raise ModelLoadError(f"checkpoint {path} {exc}") from exc
    own = model.state_dict()
    state = _strip_wrapper_prefix(_extract_state_dict(obj, path), set(own))
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


def _torchvision_model(arch: str, num_classes: int | None) -> nn.Module:
    if arch == "regnet_x_600mf":
        return regnet_x_600mf(num_classes or 1000)
    kwargs: dict = {} if num_classes is None else {"num_classes": num_classes}
    if arch in torchvision.models.list_models(module=torchvision.models.segmentation):
        kwargs["weights_backbone"] = None  # never fetch ImageNet backbone weights implicitly
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _default_classes(arch: str) -> int:
    return (
        21
        if arch in torchvision.models.list_models(module=torchvision.models.segmentation)
        else 1000
    )


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
    return load_checkpoint(_torchvision_model(arch, None), cached, arch)


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
    elif arch == "regnet_x_600mf" or arch in torchvision_models():
        if checkpoint is None and weights is not None:
            default = _default_classes(arch)
            if num_classes not in (None, default):
                raise ModelLoadError(
                    f"the pretrained weights of {arch} have {default} classes, not {num_classes}: "
                    "set model.weights null (random) or model.checkpoint to your own weights"
                )
            return _torchvision_weights(arch, weights).eval()
        model = _torchvision_model(arch, num_classes)
    else:
        why = _unsupported(arch)
        if why is not None:
            raise ModelLoadError(why)
        raise ModelLoadError(
            f"unknown model {arch!r}; available: {', '.join(sorted(EMBEDDED))}, regnet_x_600mf and "
            "every torchvision classification or segmentation CNN "
            "(torchvision.models.list_models()); your own nn.Module goes in model.net "
            "(class_path and init_args)"
        )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, arch)
    return model.eval()
