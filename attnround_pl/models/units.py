"""Split a quantized model into reconstruction units, in forward order.

One registry of block classes: a module of a registered class is one unit (all its quantized
layers reconstructed together); a quantized layer outside any block is a unit of its own. A model
with no registered block therefore falls back to one unit per Conv2d/Linear, with a warning.
Order is module registration order, which is forward order for the supported architectures
(tests check this against a traced forward pass).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn
from torchvision.models.mnasnet import _InvertedResidual as MnasNetBlock
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..quant import QuantLayer

BLOCK_TYPES: dict[type[nn.Module], str] = {}


def register_block(cls: type[nn.Module], kind: str | None = None) -> type[nn.Module]:
    """Make every module of class ``cls`` one reconstruction unit."""
    BLOCK_TYPES[cls] = kind or cls.__name__
    return cls


for _cls, _kind in (
    (BasicBlock, "BasicBlock"),
    (Bottleneck, "Bottleneck"),
    (InvertedResidual, "InvertedResidual"),
    (ResBottleneckBlock, "RegNetBlock"),
    (MnasNetBlock, "MnasNetBlock"),
):
    register_block(_cls, _kind)


@dataclass
class Unit:
    """A reconstruction unit: the module at ``path`` and the quantized layers inside it."""

    path: str
    kind: str
    layers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path or "model"


def _walk(module: nn.Module, prefix: str, units: list[Unit]) -> None:
    for child_name, child in module.named_children():
        path = f"{prefix}.{child_name}" if prefix else child_name
        if type(child) in BLOCK_TYPES:
            layers = [f"{path}.{n}" for n, m in child.named_modules() if isinstance(m, QuantLayer)]
            if layers:
                units.append(Unit(path, BLOCK_TYPES[type(child)], layers))
        elif isinstance(child, QuantLayer):
            units.append(Unit(path, "layer", [path]))
        else:
            _walk(child, path, units)


def split_units(model: nn.Module) -> list[Unit]:
    """Units of a quantized model (see ``quant.quantize_model``) in forward order."""
    units: list[Unit] = []
    _walk(model, "", units)
    if not units:
        raise ValueError(f"{type(model).__name__} has no quantized layers: quantize it first")
    if all(u.kind == "layer" for u in units):
        warnings.warn(
            f"no registered block in {type(model).__name__}: one reconstruction unit per "
            "Conv2d/Linear (register_block adds a block class)",
            stacklevel=2,
        )
    return units
