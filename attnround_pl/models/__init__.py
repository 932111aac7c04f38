"""Model zoo and the split of a model into reconstruction units."""

from .graph_units import GraphMismatchError, GraphRegion
from .units import BLOCK_TYPES, RULES, EvalFloatOps, Unit, register_block, split_units
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
    "RULES",
    "EvalFloatOps",
    "GraphMismatchError",
    "GraphRegion",
    "TORCHVISION",
    "ModelLoadError",
    "Unit",
    "available_models",
    "build_model",
    "embedded_info",
    "register_block",
    "split_units",
]
