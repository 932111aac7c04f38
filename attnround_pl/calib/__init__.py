"""Calibration on Lightning: activation cache, BlockReconstruction, BlockSequencer, the job.

The names below are imported from their modules on first use, so importing the package
loads neither torch nor Lightning (the command line's ``--help`` stays fast).
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "cache": ["UnitData", "build_unit_data", "capture"],
    "classifier": ["FloatModel"],
    "evaluation": ["EvalResult", "ModelEvaluation", "evaluate_model"],
    "pipeline": ["Calibrated", "calibrate", "evaluate", "run_calibration"],
    "reconstruction": ["BlockReconstruction"],
    "report": ["OnnxCheck", "Report", "ReportError", "Scores", "StateCheck", "UnitFidelity",
               "UnitResult"],
    "sequencer": ["BlockSequencer", "unit_mse"],
    "settings": ["ReconConfig", "RunConfig"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
