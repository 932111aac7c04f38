"""Resume: a checkpoint of the finished units after each unit, and the checks on continuing.

``progress.pt`` (written to a temporary file, then renamed) holds the quantized model's state
(finished units frozen to integer codes), the per-unit results, the report so far and a
fingerprint of everything the result depends on (float weights, calibration images, quant and
recon settings, seed). ``--run.resume <run folder>`` rebuilds the same quantized model, loads
that state and continues with the first unfinished unit; every unit's randomness derives from
(seed, unit index) only, so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..export.checkpoint import CheckpointError, cpu_state_dict, read_payload
from ..models import Unit
from ..quant import quant_layers
from ..torch_files import save_tensors
from .report import Report, UnitResult
from .run_folder import REPORT, RunFolderError
from .run_lock import LOCK

PROGRESS = "progress.pt"
PROGRESS_FORMAT = "attnround-pl/progress/1"


def fingerprint(settings: dict[str, Any], float_net: nn.Module, batches: list[Tensor]) -> str:
    """sha256 of the settings (JSON), the float weights and the calibration images."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in float_net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for batch in batches:
        h.update(batch.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a finished or unfinished run unless told to; create the folder."""
    finished = (run_dir / REPORT).exists()
    unfinished = (run_dir / PROGRESS).exists() and not finished
    if resume:
        if finished:
            raise RunFolderError(f"{run_dir} holds a finished run: nothing to resume")
        if not unfinished:
            raise RunFolderError(
                f"{run_dir} holds no {PROGRESS}: no unit of it finished, nothing to resume; "
                "start the run again without --run.resume"
            )
        return
    if (finished or unfinished) and not overwrite:
        what = "a finished run" if finished else "an unfinished run"
        hint = "" if finished else f" (continue it with --run.resume {run_dir})"
        raise FileExistsError(
            f"{run_dir} already holds {what}{hint}; choose another run.name or set "
            "--run.overwrite true"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if finished or unfinished:  # everything but this run's lock
        for child in run_dir.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def save_progress(run_dir: Path, qmodel: nn.Module, results: list[UnitResult],
                  report: Report, elapsed: float, print_: str) -> Path:
    payload = {
        "format": PROGRESS_FORMAT,
        "fingerprint": print_,
        "units": [r.name for r in results],
        "results": [r.to_dict() for r in results],
        "report": report.to_dict(),
        "elapsed": elapsed,
        "state_dict": cpu_state_dict(qmodel),
    }
    return save_tensors(payload, run_dir / PROGRESS)


def load_progress(run_dir: Path, print_: str) -> dict[str, Any]:
    """The saved progress, checked against this run's fingerprint."""
    try:
        payload = read_payload(run_dir / PROGRESS, PROGRESS_FORMAT, "progress checkpoint")
    except CheckpointError as exc:
        raise RunFolderError(f"cannot resume: {exc}") from None
    if payload["fingerprint"] != print_:
        raise RunFolderError(
            f"cannot resume {run_dir}: it was started with other settings, weights or "
            "calibration images (its fingerprint differs); use the same config and seed, or "
            "start a new run"
        )
    return payload


def restore_progress(qmodel: nn.Module, units: list[Unit], payload: dict[str, Any]) -> None:
    """Freeze the finished units' layers (so their code buffers take the saved shape), then
    load the saved state."""
    names = [u.name for u in units]
    if payload["units"] != names[: len(payload["units"])]:
        raise RunFolderError(f"cannot resume: the finished units {payload['units']} do not "
                             f"match this model's {names}")
    layers = quant_layers(qmodel)
    for unit in units[: len(payload["units"])]:
        for name in unit.layers:
            layers[name].freeze()
    qmodel.load_state_dict(payload["state_dict"])
