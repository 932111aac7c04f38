"""Calibration on Lightning: activation cache, BlockReconstruction, BlockSequencer, the job."""

from .cache import UnitData, build_unit_data, capture
from .classifier import FloatModel, ImageClassifier
from .pipeline import RunConfig, calibrate, evaluate
from .reconstruction import BlockReconstruction
from .sequencer import BlockSequencer, ReconConfig, unit_mse

__all__ = [
    "BlockReconstruction",
    "BlockSequencer",
    "FloatModel",
    "ImageClassifier",
    "ReconConfig",
    "RunConfig",
    "UnitData",
    "build_unit_data",
    "calibrate",
    "capture",
    "evaluate",
    "unit_mse",
]
