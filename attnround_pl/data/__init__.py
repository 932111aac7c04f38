"""Data: Fashion-MNIST files and the calibration/evaluation DataModules."""

from .modules import (
    CalibrationDataModule,
    DataError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
)
from .sampling import balanced_indices

__all__ = [
    "CalibrationDataModule",
    "DataError",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "balanced_indices",
]
