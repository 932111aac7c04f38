"""The calibration job: float model -> quantized model -> units -> reconstruction -> report.

Used by ``attnround-pl calibrate`` and from Python (see README / notebooks).
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from ..atomic import write_json
from ..data import CalibrationDataModule
from ..errors import SettingError
from ..mixed.allocation import size_mb
from ..mixed.report import mixed_report, mixed_table, save_bits_plot
from ..models import split_units
from ..quant import (
    QuantConfig,
    calibrate_activations,
    fold_batchnorms,
    quant_layers,
    quantize_model,
    save_quantized,
)
from .classifier import FloatModel, ImageClassifier
from .distributed import agree, launch, rank_world, shard, wants_ddp
from .export_job import check_format, export_run
from .progress import UnitProgressBar
from .resume import (
    PROGRESS,
    fingerprint,
    load_progress,
    prepare_run_dir,
    restore_progress,
    save_progress,
)
from .run_folder import CHECKPOINT, CONFIG, REPORT, RunFolderError
from .sequencer import BlockSequencer, ReconConfig

RUN_NAME_ENV = "ATTNROUND_RUN_NAME"  # the run folder name, handed to the other DDP ranks

# Trainer settings the reconstruction owns; the user's trainer options set the rest.
_RECON_TRAINER_KEYS = ("max_steps", "max_epochs", "logger", "callbacks", "enable_checkpointing",
                       "limit_val_batches", "num_sanity_val_steps", "enable_model_summary",
                       "use_distributed_sampler", "log_every_n_steps", "enable_progress_bar",
                       "default_root_dir", "limit_train_batches", "val_check_interval")  # fmt: skip


@dataclass
class RunConfig:
    """Where a run writes and what it evaluates.

    Args:
        out_dir: parent folder of run folders.
        name: run folder name (default: <arch>_<rounding>_w<bits>a<bits>_<date-time>).
        eval_float: evaluate the float model.
        eval_nearest: evaluate round-to-nearest (no reconstruction) for comparison.
        progress: show rich progress bars (per-unit lines are printed either way).
        export: formats to export the finished run to (``onnx``, ``state``), each checked
            against the PyTorch model on the evaluation set (see ``attnround-pl export``).
        resume: a run folder whose calibration stopped (crash, kill, out of memory): continue
            it from its last finished unit, with the same config and seed.
        overwrite: replace a run folder that already holds a finished or unfinished run.
    """

    out_dir: str = "runs"
    name: str | None = None
    eval_float: bool = True
    eval_nearest: bool = True
    progress: bool = True
    export: list[str] = field(default_factory=list)
    resume: str | None = None
    overwrite: bool = False

    def validate(self) -> RunConfig:
        for fmt in self.export:
            check_format(fmt)
        return self


def quiet_lightning() -> None:
    """Keep Lightning's warnings, drop its per-Trainer banners (GPU available, tips)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def user_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The user's Trainer options minus the ones the reconstruction and evaluation set."""
    return {k: v for k, v in trainer_kwargs.items() if k not in _RECON_TRAINER_KEYS}


def evaluate(net: nn.Module, data: CalibrationDataModule, trainer_kwargs: dict[str, Any],
             progress: bool = False) -> tuple[float, float]:  # fmt: skip
    """Top-1 and top-5 (percent) of ``net`` on the evaluation set, through Trainer.test."""
    trainer = pl.Trainer(**user_trainer_kwargs(trainer_kwargs), logger=False,
                         enable_progress_bar=progress, enable_model_summary=False)  # fmt: skip
    (metrics,) = trainer.test(ImageClassifier(net), datamodule=data, verbose=False)
    return 100.0 * float(metrics["top1"]), 100.0 * float(metrics["top5"])


def run_name(model: FloatModel, quant: QuantConfig) -> str:
    return (f"{model.arch}_{quant.rounding}_w{quant.w_bits}a{quant.a_bits}_"
            f"{time.strftime('%Y%m%d-%H%M%S')}")  # fmt: skip


def check_step_options(quant: QuantConfig, recon: ReconConfig,
                       trainer_kwargs: dict[str, Any]) -> None:  # fmt: skip
    """Refuse, before any work, what ``recon.compile`` and ``recon.cuda_graph`` cannot run."""
    if recon.compile != "off" and wants_ddp(trainer_kwargs):
        raise SettingError(f"recon.compile={recon.compile!r} runs in one process only: set it "
                           "to 'off' to calibrate with several devices")  # fmt: skip
    if not recon.cuda_graph:
        return
    problems = []
    if not torch.cuda.is_available():
        problems.append("a CUDA device (torch sees none)")
    elif str(trainer_kwargs.get("accelerator", "auto")) == "cpu":
        problems.append("a GPU accelerator (trainer.accelerator is cpu)")
    if wants_ddp(trainer_kwargs):
        problems.append("one process (not several devices)")
    if quant.rounding == "adaround":
        problems.append("a rounding other than adaround (its beta changes every step)")
    if quant.drop_prob > 0:
        problems.append("quant.drop_prob=0 (QDrop's generator is not recorded)")
    if problems:
        raise SettingError("recon.cuda_graph needs " + "; ".join(problems))


@dataclass
class _RunFolder:
    """Where this process writes (rank 0 alone writes; ``echo`` prints on rank 0 only)."""

    path: Path
    rank: int
    world: int
    echo: Callable[..., None]


def _open_run_folder(model: FloatModel, data: CalibrationDataModule, quant: QuantConfig,
                     run: RunConfig, trainer_kwargs: dict[str, Any], config_text: str | None,
                     console: Console) -> _RunFolder:  # fmt: skip
    """Start the DDP ranks (if asked) and prepare the run folder on rank 0; every rank stops
    with rank 0's error."""
    name = run.name or os.environ.get(RUN_NAME_ENV) or run_name(model, quant)
    path = Path(run.resume or Path(run.out_dir) / name)
    data.prepare_data()  # before the other ranks exist: one process downloads or unpacks
    if wants_ddp(trainer_kwargs):
        os.environ[RUN_NAME_ENV] = name  # the ranks started next write to the same folder
    launch(trainer_kwargs)
    os.environ.pop(RUN_NAME_ENV, None)
    rank, world = rank_world()
    error = None
    if rank == 0:  # rank 0 alone touches the run folder; the others stop with it
        try:
            prepare_run_dir(path, resume=run.resume is not None, overwrite=run.overwrite)
            if config_text is not None and run.resume is None:
                (path / CONFIG).write_text(config_text)
        except (RunFolderError, FileExistsError) as exc:
            error = exc
    agree(error)
    echo = console.print if rank == 0 else (lambda *args, **kwargs: None)
    return _RunFolder(path, rank, world, echo)


def _new_report(model: FloatModel, data: CalibrationDataModule, quant: QuantConfig,
                recon: ReconConfig) -> dict[str, Any]:  # fmt: skip
    return {
        "model": model.arch,
        "rounding": quant.rounding,
        "w_bits": quant.w_bits,
        "a_bits": quant.a_bits,
        "tau": quant.tau if quant.rounding == "attention" else None,
        "calib_size": len(data.calib_set),
        "quant": quant.to_dict(),
        "recon": recon.__dict__.copy(),
        "machine": machine(),
    }


def _evaluate_baselines(float_net: nn.Module, quant: QuantConfig, run: RunConfig,
                        batches: list[Tensor], score: Callable[[nn.Module], tuple[float, float]],
                        report: dict[str, Any], echo: Callable[..., None]) -> None:  # fmt: skip
    """Float and round-to-nearest top-1/top-5 into ``report`` (as ``run`` asks)."""
    if run.eval_float:
        report["float_top1"], report["float_top5"] = score(float_net)
        echo(f"float: top-1 {report['float_top1']:.2f} %")
    if run.eval_nearest:
        nearest = quantize_model(float_net, replace(quant, rounding="nearest"))
        calibrate_activations(nearest, batches)
        report["nearest_top1"], report["nearest_top5"] = score(nearest)
        echo(f"round-to-nearest: top-1 {report['nearest_top1']:.2f} %")


def _quantize(float_net: nn.Module, quant: QuantConfig, batches: list[Tensor],
              report: dict[str, Any], echo: Callable[..., None]) -> nn.Module:  # fmt: skip
    """The quantized copy with its activation steps initialised; size (and the mixed-precision
    allocation) into ``report``."""
    qmodel = quantize_model(float_net, quant)
    layers = quant_layers(qmodel).values()
    report["size_mb"] = size_mb([m.layer.weight.numel() for m in layers],
                                [m.weight_quantizer.bits for m in layers])  # fmt: skip
    if qmodel.bit_allocation is not None:
        mixed = mixed_report(qmodel.bit_allocation, quant.mixed.bit_list,
                             quant.mixed.budget_bits)  # fmt: skip
        report["mixed"] = mixed
        echo(mixed_table(mixed))
    calibrate_activations(qmodel, batches)
    return qmodel


def _tensorboard(folder: _RunFolder, model: FloatModel, quant: QuantConfig, recon: ReconConfig,
                 report: dict[str, Any], units: int) -> TensorBoardLogger:  # fmt: skip
    logger = TensorBoardLogger(str(folder.path), name="tb", version="", default_hp_metric=False)
    if "mixed" in report and folder.rank == 0:
        title = f"{model.arch} mixed {quant.mixed.bit_list}"
        figure = save_bits_plot(report["mixed"], title, folder.path / "bits_per_layer.png")
        logger.experiment.add_figure("mixed/bits_per_layer", figure, 0)
    logger.log_hyperparams(
        {**{f"quant/{k}": str(v) if isinstance(v, (dict, list)) else v
            for k, v in quant.to_dict().items()},
         **{f"recon/{k}": v for k, v in recon.__dict__.items()},
         "model/arch": model.arch, "data/calib_size": report["calib_size"], "units": units}
    )  # fmt: skip
    return logger


def _trainer_factory(recon: ReconConfig, run: RunConfig, trainer_kwargs: dict[str, Any],
                     logger: TensorBoardLogger, path: Path
                     ) -> Callable[[BlockSequencer], pl.Trainer]:  # fmt: skip
    """One fresh Trainer per unit: the user's options plus the ones the reconstruction owns."""
    user = user_trainer_kwargs(trainer_kwargs)

    def make_trainer(sequencer: BlockSequencer) -> pl.Trainer:
        callbacks = [sequencer, *([UnitProgressBar()] if run.progress else [])]
        return pl.Trainer(
            **user, max_steps=recon.iters, max_epochs=1, logger=logger, callbacks=callbacks,
            enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
            enable_model_summary=False, use_distributed_sampler=False,
            log_every_n_steps=min(recon.log_every_n_steps, recon.iters),
            enable_progress_bar=run.progress, default_root_dir=str(path),
        )  # fmt: skip

    return make_trainer


def _write_run(folder: _RunFolder, qmodel: nn.Module, model: FloatModel, quant: QuantConfig,
               run: RunConfig, data: CalibrationDataModule,
               report: dict[str, Any]) -> None:  # fmt: skip
    """quantized.pt, report.json and the exports (rank 0); progress.pt goes."""
    meta = {"arch": model.arch, "num_classes": model.num_classes}
    save_quantized(qmodel, folder.path / CHECKPOINT, quant, meta)
    write_json(folder.path / REPORT, report)
    (folder.path / PROGRESS).unlink(missing_ok=True)  # quantized.pt holds it all now
    for fmt in run.export:  # the finished run is on disk; an export error loses nothing
        report.update(export_run(folder.path, fmt, data))


def calibrate(
    model: FloatModel, data: CalibrationDataModule, quant: QuantConfig, recon: ReconConfig,
    run: RunConfig, trainer_kwargs: dict[str, Any] | None = None,
    config_text: str | None = None, console: Console | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Quantize ``model`` with block reconstruction; write the run folder; return the report.

    Phases: open the run folder (and the DDP ranks), evaluate float and round-to-nearest,
    quantize, reconstruct unit by unit (``progress.pt`` after each), evaluate, write.
    """
    quiet_lightning()
    trainer_kwargs = dict(trainer_kwargs or {})
    quant.validate()
    recon.validate()
    run.validate()
    check_step_options(quant, recon, trainer_kwargs)
    folder = _open_run_folder(model, data, quant, run, trainer_kwargs, config_text,
                              console or Console())  # fmt: skip
    echo = folder.echo

    data.setup("test")
    batches = [x for x, _ in data.calib_dataloader(batch_size=256)]
    float_net = model.net.eval()
    settings = {"quant": quant.to_dict(), "recon": recon.__dict__, "arch": model.arch,
                "num_classes": model.num_classes}  # fmt: skip
    print_ = fingerprint(settings, float_net, batches)
    progress = load_progress(folder.path, print_) if run.resume is not None else None

    def score(net: nn.Module) -> tuple[float, float]:
        return evaluate(net, data, trainer_kwargs, run.progress)

    report = _new_report(model, data, quant, recon)
    if progress is not None:
        report.update(progress["report"])
        echo(f"resuming {folder.path}: {len(progress['units'])} unit(s) already done")
    if progress is None:  # a resumed run has them in its report already
        _evaluate_baselines(float_net, quant, run, batches, score, report, echo)

    started = time.perf_counter()
    elapsed_before = progress["elapsed"] if progress is not None else 0.0
    qmodel = _quantize(float_net, quant, batches, report, echo)
    folded = copy.deepcopy(float_net).eval()
    fold_batchnorms(folded)
    units = split_units(qmodel)
    if progress is not None:
        restore_progress(qmodel, units, progress)
    logger = _tensorboard(folder, model, quant, recon, report, len(units))

    def checkpoint(results: list[dict[str, Any]]) -> None:
        if folder.rank == 0:
            elapsed = elapsed_before + time.perf_counter() - started
            save_progress(folder.path, qmodel, results, report, elapsed, print_)

    sequencer = BlockSequencer(
        qmodel, folded, units, shard(batches, folder.rank, folder.world), recon,
        _trainer_factory(recon, run, trainer_kwargs, logger, folder.path), seed=quant.seed,
        logger=logger, echo=echo, on_unit_done=checkpoint,
        resume_hint=f"Finished units are kept: continue with --run.resume {folder.path}",
        total=sum(len(b) for b in batches),
    )  # fmt: skip
    echo(f"{len(units)} units, {recon.iters} iterations each at batch {recon.batch_size}")
    report["units"] = sequencer.run(done=progress["results"] if progress is not None else None)
    report["calib_seconds"] = round(elapsed_before + time.perf_counter() - started, 2)
    if progress is not None:
        report["resumed_after_units"] = len(progress["units"])
    qmodel.eval()
    report["quant_top1"], report["quant_top5"] = score(qmodel)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    report["run_dir"] = str(folder.path)
    if folder.world > 1:
        report["devices"] = folder.world
    logger.experiment.add_scalar("eval/quant_top1", report["quant_top1"], 0)
    logger.finalize("success")
    if folder.rank == 0:  # every rank holds the same frozen model and metrics
        _write_run(folder, qmodel, model, quant, run, data, report)
        echo(summary_table(report))
    return report


def summary_table(report: dict[str, Any]) -> Table:
    """Float, round-to-nearest and calibrated top-1 / top-5, with the calibration time."""
    w_bits = report["mixed"]["bit_list"] if "mixed" in report else report["w_bits"]
    title = (f"{report['model']} W{w_bits}A{report['a_bits']}: "
             f"{report['calib_size']} calibration images")  # fmt: skip
    table = Table(title=title)
    for col in ("model", "top-1 %", "top-5 %", "calibration s"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def row(label: str, key: str, seconds: str = "") -> None:
        if f"{key}_top1" in report:
            table.add_row(label, f"{report[f'{key}_top1']:.2f}", f"{report[f'{key}_top5']:.2f}",
                          seconds)  # fmt: skip

    row("float", "float")
    row("round-to-nearest", "nearest")
    row(report["rounding"], "quant", f"{report['calib_seconds']:.0f}")
    if "onnx_top1" in report:
        label = (f"{report['rounding']}, ONNX in onnxruntime "
                 f"({report['onnx_argmax_mismatch']} predictions differ)")  # fmt: skip
        table.add_row(label, f"{report['onnx_top1']:.2f}", "-", "")
    return table
