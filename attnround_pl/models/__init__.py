"""Model zoo and the split of a model into reconstruction units.

The names below are imported from their modules on first use, so importing the package does
not load torch or torchvision until a name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "graph_units": ["GraphMismatchError", "GraphRegion"],
    "units": ["BLOCK_TYPES", "RULES", "EvalFloatOps", "Unit", "register_block", "split_units"],
    "zoo": [
        "EMBEDDED",
        "TORCHVISION",
        "ModelLoadError",
        "available_models",
        "build_model",
        "embedded_info",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
