"""Calibration on Lightning: activation cache, BlockReconstruction, BlockSequencer, the job.

The names below are imported from their modules on first use, so importing the package
loads neither torch nor Lightning (the command line's ``--help`` stays fast).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "cache": ["UnitData", "build_unit_data", "capture"],
    "classifier": ["FloatModel"],
    "evaluation": ["EvalResult", "ModelEvaluation", "evaluate_model"],
    "pipeline": ["Calibrated", "calibrate", "evaluate", "run_calibration"],
    "reconstruction": ["BlockReconstruction"],
    "sequencer": ["BlockSequencer", "unit_mse"],
    "settings": ["ReconConfig", "RunConfig"],
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
