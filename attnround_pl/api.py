"""The Python API: quantize any model in one call, save it, load it back.

    import attnround_pl
    qmodel = attnround_pl.quantize(model, loader, w_bits=4, a_bits=4)
    qmodel.report.quantized.fidelity         # SQNR, cosine, max |diff| against the float model
    attnround_pl.save(qmodel, "model_w4a4.pt")
    qmodel = attnround_pl.load("model_w4a4.pt", model=MyNet())   # MyNet: rebuilt from the file
                                                                 # when it was a zoo/import model

``model`` is any ``nn.Module`` that maps one image batch to a tensor or a dict of tensors;
``data`` a DataLoader, any iterable of image tensors or of ``(images, ...)`` tuples, one tensor
of images, or a LightningDataModule (its ``train_dataloader`` feeds calibration). Labels are
ignored for calibration; when the evaluation data carries them, the report has top-1/top-5.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import nn

from .calib.pipeline import checkpoint_meta, run_calibration
from .calib.report import Report
from .calib.run_folder import CHECKPOINT, REPORT, build_float
from .calib.settings import ReconConfig, RunConfig
from .data.preprocessing import Preprocessing
from .errors import SettingError
from .export.checkpoint import load_quantized, save_quantized
from .mixed.config import MixedConfig
from .models.source import ModelSource
from .quant import QuantConfig


def _with(config: Any, **overrides: Any) -> Any:
    """``config`` with the overrides that are not None."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, **given) if given else config


def quantize(
    model: nn.Module,
    data: Any,
    *,
    w_bits: int | None = None,
    a_bits: int | None = None,
    rounding: str | None = None,
    iters: int | None = None,
    calib_size: int | None = 1024,
    eval_data: Any = None,
    quant: QuantConfig | None = None,
    recon: ReconConfig | None = None,
    mixed: MixedConfig | dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    name: str | None = None,
    overwrite: bool = False,
    trainer: dict[str, Any] | None = None,
    progress: bool = True,
    seed: int | None = None,
    source: ModelSource | None = None,
) -> nn.Module:
    """Quantize ``model`` by block reconstruction on ``data``; return the quantized model.

    Args:
        model: the float model (never modified; a quantized copy is returned).
        data: calibration images (see the module docstring).
        w_bits, a_bits, rounding, seed: override ``quant`` (default ``QuantConfig()``: W4A4,
            Attention Round with tau 0.5, Lp range searches with p = 2.4, first and last layer
            8-bit: with ``ReconConfig()``, the ``attnround`` recipe; ``QuantConfig(
            scale_search_p=2.0)`` with ``ReconConfig(lr=4e-4, unit_blocks=1,
            join_end_layers=False)`` is the paper's setting; the rounding's own settings are
            ``QuantConfig(rounding_args={"tau": 0.25})``).
        iters: optimisation steps per unit, overrides ``recon`` (default ``ReconConfig()``:
            2,000 at batch 64, the rounding parameters at Adam lr 1e-3, the activation steps at
            4e-4, two consecutive blocks a unit and the stem and the head joined to the block
            next to them).
        mixed: per-layer weight bits by coding length, a ``MixedConfig`` or its dict
            (``{"bit_list": [3, 4, 5, 6]}``); default: single precision. The allocation is
            ``qmodel.bit_allocation``, its table the report's ``mixed``.
        calib_size: images taken from ``data`` (the first ones; None: all).
        eval_data: evaluation batches for the report (top-1 with labels, fidelity always);
            default: the data module's evaluation split, else the calibration images.
        out_dir: write a run folder there (config, TensorBoard, checkpoint, report), as the
            CLI does; None (default) writes nothing.
        name: the run folder's name (with ``out_dir``).
        overwrite: replace a run folder of that name (with ``out_dir``).
        trainer: Lightning Trainer options (``{"accelerator": "gpu", "devices": 2}``).
        progress: progress bars and per-unit lines.
        source: how a saved copy rebuilds the float architecture (default: from the object;
            see ``models.source``).

    Returns the frozen quantized model in eval mode; ``.report`` holds the ``Report`` (float,
    round-to-nearest and quantized fidelity and top-1, per-unit errors, time).
    """
    quant = _with(
        quant or QuantConfig(), w_bits=w_bits, a_bits=a_bits, rounding=rounding, seed=seed
    )
    recon = _with(recon or ReconConfig(), iters=iters)
    if isinstance(mixed, dict):
        mixed = MixedConfig(**mixed)
    run = None
    if out_dir is not None:
        run = RunConfig(out_dir=str(out_dir), name=name, progress=progress, overwrite=overwrite)
    elif name is not None:
        raise SettingError("name names a run folder: give out_dir too")
    result = run_calibration(
        model,
        data,
        quant,
        recon,
        run,
        trainer,
        console=None if progress else _quiet_console(),
        calib_size=calib_size,
        eval_data=eval_data,
        source=source,
        progress=progress,
        mixed=mixed,
    )
    qmodel = result.model
    qmodel.report = result.report
    qmodel.quant_config = quant
    return qmodel


def _quiet_console() -> Any:
    from rich.console import Console

    return Console(quiet=True)


def save(qmodel: nn.Module, path: str | os.PathLike) -> Path:
    """Write a model returned by ``quantize`` to ``path`` (the format of a run folder's
    ``quantized.pt``; ``load`` reads it back bit for bit)."""
    missing = [a for a in ("quant_config", "float_source") if not hasattr(qmodel, a)]
    if missing:
        raise SettingError(
            "save takes a model returned by attnround_pl.quantize or load; this "
            f"{type(qmodel).__name__} has no {', '.join(missing)}"
        )
    meta = checkpoint_meta(qmodel.float_source, getattr(qmodel, "output_classes", None),
                           getattr(qmodel, "preprocessing", None))
    return save_quantized(qmodel, path, qmodel.quant_config, meta)


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """The quantized model saved at ``path`` (a file from ``save``, or a run folder).

    ``model``: the float model object (any weights), needed when the quantized model was made
    from an object that the file cannot rebuild (a model built in a notebook); the error says
    so when it is missing. The returned model has ``.report`` when ``path`` is a run folder.
    """
    path = Path(path)
    folder = path if path.is_dir() else None
    file = path / CHECKPOINT if folder is not None else path
    qmodel, payload = load_quantized(file, lambda meta: build_float(meta, model))
    meta = payload["meta"]
    qmodel.quant_config = QuantConfig.from_dict(payload["quant"])  # any version's keys
    qmodel.float_source = ModelSource.from_meta(meta)
    qmodel.output_classes = meta.get("num_classes")
    recorded = meta.get("preprocessing")  # absent in files saved before it was recorded
    qmodel.preprocessing = None if recorded is None else Preprocessing.from_dict(recorded)
    if folder is not None and (folder / REPORT).is_file():
        qmodel.report = Report.read(folder / REPORT)
    return qmodel
