"""What a run folder holds, and the check that a calibration in it finished."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from ..models.source import ModelSource

REPORT = "report.json"
CHECKPOINT = "quantized.pt"
CONFIG = "config.yaml"


class RunFolderError(InputError, RuntimeError):
    """A run folder is missing, or its calibration did not finish."""


def build_float(meta: dict[str, Any], model: nn.Module | None = None) -> nn.Module:
    """The float architecture a saved quantized model was made from (random weights: every
    quantized tensor comes from the file), or ``model`` when the caller hands it over (needed
    for a model that was passed as an object; see ``models.source``)."""
    return ModelSource.from_meta(meta).build(model)


def check_run_folder(run_dir: str | os.PathLike, need_config: bool = True) -> Path:
    """The folder of a finished calibration: report.json, quantized.pt and, when the command
    rebuilds the data from it, config.yaml (``calibrate`` from Python writes none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if need_config and not (run_dir / CONFIG).is_file():
        raise RunFolderError(f"{run_dir} holds no {CONFIG}: not a calibration run folder")
    for name in (REPORT, CHECKPOINT):
        if not (run_dir / name).is_file():
            raise RunFolderError(f"{run_dir} holds no {name}: its calibration did not finish")
    return run_dir
