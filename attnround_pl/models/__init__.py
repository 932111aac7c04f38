"""Model zoo and the split of a model into reconstruction units."""

from .units import BLOCK_TYPES, Unit, register_block, split_units
from .zoo import (
    EMBEDDED,
    TORCHVISION,
    ModelLoadError,
    available_models,
    build_model,
    embedded_info,
)

__all__ = [
    "BLOCK_TYPES",
    "EMBEDDED",
    "TORCHVISION",
    "ModelLoadError",
    "Unit",
    "available_models",
    "build_model",
    "embedded_info",
    "register_block",
    "split_units",
]
