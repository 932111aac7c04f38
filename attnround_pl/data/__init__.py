"""Data: Fashion-MNIST files, the calibration/evaluation DataModules, and any user source.

The names below are imported from their modules on first use (``from attnround_pl.data import
FashionMNISTDataModule``), so importing the package loads neither torch nor Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

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
