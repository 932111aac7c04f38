"""Data: Fashion-MNIST files and the calibration/evaluation DataModules."""

from .modules import (
    CalibrationDataModule,
    DataError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    check_loader_settings,
)
from .sampling import balanced_indices

__all__ = [
    "CalibrationDataModule",
    "DataError",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "balanced_indices",
    "check_loader_settings",
]
