"""Data: Fashion-MNIST files, the calibration/evaluation DataModules, and any user source."""

from .modules import (
    UNLABELLED,
    CalibrationDataModule,
    DataError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    check_image_settings,
    check_loader_settings,
)
from .sampling import balanced_indices
from .sources import calibration_images, evaluation_batches, split_batch

__all__ = [
    "UNLABELLED",
    "CalibrationDataModule",
    "DataError",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "balanced_indices",
    "calibration_images",
    "check_image_settings",
    "check_loader_settings",
    "evaluation_batches",
    "split_batch",
]
