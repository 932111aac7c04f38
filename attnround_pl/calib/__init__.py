"""Calibration on Lightning: activation cache, BlockReconstruction, BlockSequencer, the job."""

from .cache import UnitData, build_unit_data, capture
from .classifier import FloatModel
from .evaluation import EvalResult, ModelEvaluation, evaluate_model
from .pipeline import Calibrated, RunConfig, calibrate, evaluate, run_calibration
from .reconstruction import BlockReconstruction
from .sequencer import BlockSequencer, ReconConfig, unit_mse

__all__ = [
    "BlockReconstruction",
    "BlockSequencer",
    "Calibrated",
    "EvalResult",
    "FloatModel",
    "ModelEvaluation",
    "ReconConfig",
    "RunConfig",
    "UnitData",
    "build_unit_data",
    "calibrate",
    "capture",
    "evaluate",
    "evaluate_model",
    "run_calibration",
    "unit_mse",
]
