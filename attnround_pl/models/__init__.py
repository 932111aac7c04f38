"""Model zoo and the split of a model into reconstruction units.

The names below are imported from their modules on first use, so importing the package does
not load torch or torchvision until a name is used.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "graph_units": ["GraphMismatchError", "GraphRegion"],
    "units": ["BLOCK_TYPES", "RULES", "EvalFloatOps", "Unit", "chain_blocks", "join_end_layers",
              "register_block", "split_units"],
    "zoo": [
        "EMBEDDED",
        "TORCHVISION",
        "ModelLoadError",
        "available_models",
        "build_model",
        "embedded_info",
    ],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
