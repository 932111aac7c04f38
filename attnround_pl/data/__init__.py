"""Data: Fashion-MNIST files, the calibration/evaluation DataModules, and any user source.

The names below are imported from their modules on first use (``from attnround_pl.data import
FashionMNISTDataModule``), so importing the package loads neither torch nor Lightning.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "modules": [
        "UNLABELLED",
        "CalibrationDataModule",
        "DataError",
        "FashionMNISTDataModule",
        "ImageFolderDataModule",
        "check_image_settings",
        "check_loader_settings",
    ],
    "preprocessing": ["Preprocessing", "calibrated_preprocessing", "preprocessing_of"],
    "sampling": ["balanced_indices"],
    "sources": ["calibration_images", "evaluation_batches", "split_batch"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
