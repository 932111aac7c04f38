"""The calibration job: float model -> quantized model -> units -> reconstruction -> report.

Used by ``attnround-pl calibrate`` and from Python (``attnround_pl.quantize``, which calls
``run_calibration``). The model is any ``nn.Module`` (or a ``FloatModel``); the data a
``CalibrationDataModule``, any ``LightningDataModule``, a DataLoader, an iterable of image
batches or one tensor of images (see ``data.sources``). A run folder is written when a
``RunConfig`` is given (the CLI always gives one).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import platform
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from ..atomic import DiskFullError
from ..data import CalibrationDataModule, calibration_images, evaluation_batches, split_batch
from ..data.preprocessing import Preprocessing, calibrated_preprocessing
from ..errors import InputError, SettingError
from ..export.checkpoint import save_quantized
from ..mixed.allocation import allocate_model, size_mb
from ..mixed.config import MixedConfig
from ..mixed.report import mixed_report, mixed_table, save_bits_plot
from ..models import Unit, chain_blocks, join_end_layers, split_units
from ..models.source import ModelSource, source_of
from ..quant import (
    QuantConfig,
    QuantConfigError,
    calibrate_activations,
    float_ops,
    fold_batchnorms,
    quant_layers,
    quantizable_layers,
    quantize_model,
    round_to_nearest,
)
from ..quant.fidelity import FidelityStats, output_tensors
from ..quant.placement import find_block_consumers, place_block_inputs
from ..quant.profiles import check_mixed_bits
from .cache import build_unit_data
from .classifier import FloatModel
from .distributed import agree, launch, rank_world, shard, wants_ddp
from .evaluation import EvalResult, classes_of, evaluate_model
from .export_job import export_run
from .host_speed import ReferenceClock, host_speed
from .interrupt import interruption_in, stop_on_signals, stopped_message
from .progress import UnitProgressBar
from .report import Report, Scores, UnitFidelity, UnitResult, WallSeconds
from .resume import (
    PROGRESS,
    fingerprint,
    load_progress,
    prepare_run_dir,
    restore_progress,
    save_progress,
)
from .run_folder import CHECKPOINT, CONFIG, REPORT, RunFolderError
from .run_lock import RunLock
from .sequencer import BlockSequencer
from .settings import ReconConfig, RunConfig

# Redraws per second of a unit's progress bar (rich's refresh rate); the bar's count moves
# once per Lightning batch, every ``reconstruction.STEPS_PER_BATCH`` steps in one process.
PROGRESS_REFRESH_PER_SECOND = 10
RUN_NAME_ENV = "ATTNROUND_RUN_NAME"  # the run folder name, handed to the other DDP ranks

# Trainer settings the reconstruction owns; the user's trainer options set the rest.
_RECON_TRAINER_KEYS = ("max_steps", "max_epochs", "logger", "callbacks", "enable_checkpointing",
                       "limit_val_batches", "num_sanity_val_steps", "enable_model_summary",
                       "use_distributed_sampler", "log_every_n_steps", "enable_progress_bar",
                       "default_root_dir", "limit_train_batches", "val_check_interval")


def quiet_lightning() -> None:
    """Keep Lightning's warnings, drop its per-Trainer banners (GPU available, tips)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # A unit's float ops (unfolded BatchNorm, dropout) stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def cpu(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name and the instruction set torch's CPU kernels use (e.g. ``Intel(R)
    Xeon(R) Processor, AVX512``): hosts of the same ``machine()`` description differ in both, and
    the kernels (so the float summation order, so top-1 by about 0.1 pp) differ with them."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip() or name
                break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def user_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The user's Trainer options minus the ones the reconstruction and evaluation set."""
    return {k: v for k, v in trainer_kwargs.items() if k not in _RECON_TRAINER_KEYS}


def evaluate(net: nn.Module, batches: Any, trainer_kwargs: dict[str, Any],
             progress: bool = False, reference: nn.Module | None = None) -> EvalResult:
    """Top-1/top-5 (when the batches carry labels and ``net`` returns logits) and fidelity
    against ``reference`` of ``net`` on ``batches``, through Trainer.test."""
    return evaluate_model(net, batches, user_trainer_kwargs(trainer_kwargs), reference, progress)


def run_name(source: ModelSource, quant: QuantConfig) -> str:
    return (f"{source.label}_{quant.rounding}_w{quant.w_bits}a{quant.a_bits}_"
            f"{time.strftime('%Y%m%d-%H%M%S')}")


def rounding_schedule(quant: QuantConfig) -> str | None:
    """What of the weights' rounding changes over a unit's steps, in words, or None: AdaRound's
    beta, Attention Round's ``tau_end`` or ``relax``."""
    if quant.rounding == "adaround":
        return "AdaRound's beta anneals"
    if quant.rounding == "attention":
        settings = quant.rounding_settings()
        if settings.tau_end is not None:
            return "quant.rounding_args.tau_end shrinks eq. 6's width"
        if settings.relax > 0:
            return "quant.rounding_args.relax hardens the soft rounding"
    return None


def check_step_options(quant: QuantConfig, recon: ReconConfig,
                       trainer_kwargs: dict[str, Any]) -> None:
    """Refuse, before any work, what ``recon.compile``, ``recon.cuda_graph``,
    ``recon.act_stage_iters``, ``recon.block_output_steps``, ``recon.plateau_gain`` and
    ``quant.rounding_args.relax`` cannot run together."""
    if recon.act_stage_iters > 0 and quant.a_bits >= 32:
        raise SettingError(f"recon.act_stage_iters={recon.act_stage_iters} learns the activation "
                           f"steps in a second pass, but quant.a_bits={quant.a_bits} keeps the "
                           "activations float: set it to 0")
    if recon.block_output_steps and quant.act_placement != "blocks":
        raise SettingError("recon.block_output_steps learns each block's input quantizer with "
                           "the unit before it: it needs quant.act_placement=blocks, not "
                           f"{quant.act_placement!r}")
    schedule = rounding_schedule(quant)
    if schedule is not None and recon.plateau_gain > 0:
        raise SettingError(f"recon.plateau_gain={recon.plateau_gain} ends units early or late, "
                           f"but {schedule} over recon.iters steps: set one of them to its "
                           "default")
    relax = quant.rounding == "attention" and quant.rounding_settings().relax > 0
    if relax and recon.compile != "off":
        raise SettingError(f"recon.compile={recon.compile!r} would compile the unit again at "
                           "every step: quant.rounding_args.relax changes the soft rounding's "
                           "hardness every step; set one of them to its default")
    if recon.compile != "off" and wants_ddp(trainer_kwargs):
        raise SettingError(f"recon.compile={recon.compile!r} runs in one process only: set it "
                           "to 'off' to calibrate with several devices")
    if not recon.cuda_graph:
        return
    problems = []
    if not torch.cuda.is_available():
        problems.append("a CUDA device (torch sees none)")
    elif str(trainer_kwargs.get("accelerator", "auto")) == "cpu":
        problems.append("a GPU accelerator (trainer.accelerator is cpu)")
    if wants_ddp(trainer_kwargs):
        problems.append("one process (not several devices)")
    if schedule is not None:
        problems.append(f"a rounding that stays the same over the steps (here {schedule})")
    if quant.drop.prob > 0:
        problems.append("quant.drop.prob=0 (QDrop's generator is not recorded)")
    if problems:
        raise SettingError("recon.cuda_graph needs " + "; ".join(problems))


@dataclass
class _RunFolder:
    """Where this process writes (rank 0 alone writes; ``echo`` prints on rank 0 only);
    ``path`` is None for a run without a folder (Python, ``run=None``). Rank 0 holds the
    folder's lock until ``close()``."""

    path: Path | None
    rank: int
    world: int
    echo: Callable[..., None]
    lock: RunLock | None = None

    @property
    def writes(self) -> bool:
        return self.path is not None and self.rank == 0

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _take_run_folder(path: Path, run: RunConfig, config_text: str | None) -> RunLock:
    """Lock the run folder, then check and prepare it; a folder this process cannot write
    (read-only, no permission) is one line, before any compute."""
    lock = None
    try:
        if run.resume is not None and not path.is_dir():
            raise RunFolderError(f"run folder {path} does not exist: nothing to resume")
        lock = RunLock.acquire(path)
        prepare_run_dir(path, resume=run.resume is not None, overwrite=run.overwrite)
        if config_text is not None and run.resume is None:
            (path / CONFIG).write_text(config_text)
        return lock
    except BaseException as exc:
        if lock is not None:
            lock.release()
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise RunFolderError(
                f"cannot write the run folder {path}: {exc.strerror or exc}; choose a writable "
                "--run.out_dir"
            ) from None
        raise


def _open_run_folder(source: ModelSource, quant: QuantConfig, run: RunConfig | None,
                     trainer_kwargs: dict[str, Any], config_text: str | None,
                     console: Console) -> _RunFolder:
    """Start the DDP ranks (if asked) and prepare the run folder on rank 0; every rank stops
    with rank 0's error."""
    path = None
    if run is not None:
        name = run.name or os.environ.get(RUN_NAME_ENV) or run_name(source, quant)
        path = Path(run.resume or Path(run.out_dir) / name)
        if wants_ddp(trainer_kwargs):
            os.environ[RUN_NAME_ENV] = name  # the ranks started next write to the same folder
    launch(trainer_kwargs)
    os.environ.pop(RUN_NAME_ENV, None)
    rank, world = rank_world()
    error, lock = None, None
    if rank == 0 and run is not None:  # rank 0 alone touches the run folder
        try:
            lock = _take_run_folder(path, run, config_text)
        except (RunFolderError, FileExistsError) as exc:
            error = exc
    agree(error)
    echo = console.print if rank == 0 else (lambda *args, **kwargs: None)
    return _RunFolder(path, rank, world, echo, lock)


@dataclass
class CalibrationInputs:
    """The calibration images in batches of 256 (fixed order) and where evaluation data
    comes from (None: no evaluation data; fidelity is then measured on the calibration
    images)."""

    batches: list[Tensor]
    eval_batches: Any
    eval_source: str


def resolve_model(
    model: nn.Module | str, source: ModelSource | None
) -> tuple[nn.Module, ModelSource]:
    """The float network (eval mode) and how to rebuild it; a string is a zoo name (its
    default weights: the embedded checkpoint, torchvision's cached pretrained weights)."""
    if isinstance(model, str):
        model = FloatModel(arch=model)
    if not isinstance(model, nn.Module):
        raise SettingError(
            f"the model must be a torch nn.Module or a zoo name, not {type(model).__name__}"
        )
    if isinstance(model, FloatModel):
        return model.net.eval(), source or model.source
    return model.eval(), source or source_of(model)


class ModelInputError(InputError, RuntimeError):
    """The float model does not run on the calibration images, or returns something else
    than a tensor or a dict of tensors."""


def check_model_runs(float_net: nn.Module, batch: Tensor, source: ModelSource) -> int | None:
    """Run the float model on two calibration images before any work; every failure a user
    can cause (channels, input size, a forward that takes two inputs, a tuple output) is one
    line. Returns the number of classes when the output is (N, classes) logits."""
    shape = tuple(batch[:2].shape)
    try:
        with torch.no_grad():
            output = float_net(batch[:2])
        output_tensors(output)
    except TypeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelInputError(
            f"{source.label} cannot be called on one image batch of shape {shape}: {first} "
            "(attnround-pl calls model(images) and takes a tensor or a dict of tensors back)"
        ) from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelInputError(
            f"{source.label} does not run on the calibration images of shape {shape}: {first}"
        ) from None
    return classes_of(output)


def resolve_data(data: Any, calib_size: int | None, eval_data: Any = None) -> CalibrationInputs:
    """Calibration batches and evaluation data from anything ``data.sources`` takes."""
    if isinstance(data, CalibrationDataModule):
        data.setup("test")
        size = None  # the data module chose its calibration set
    else:
        size = calib_size
    images = calibration_images(data, size=size)
    batches = list(images.split(256))
    if eval_data is not None:
        return CalibrationInputs(batches, evaluation_batches(eval_data), "evaluation data")
    if isinstance(data, pl.LightningDataModule):
        evaluation = evaluation_batches(data)
        if evaluation is not None:
            what = getattr(data, "eval_description", "the data module's evaluation split")
            return CalibrationInputs(batches, evaluation, what)
    return CalibrationInputs(batches, batches, "calibration images (no evaluation data)")


def _new_report(source: ModelSource, calib_images: int, quant: QuantConfig, recon: ReconConfig,
                eval_source: str) -> Report:
    return Report(
        model=source.label,
        model_source=source.to_dict(),
        rounding=quant.rounding,
        w_bits=quant.w_bits,
        a_bits=quant.a_bits,
        tau=quant.rounding_settings().tau if quant.rounding == "attention" else None,
        calib_size=calib_images,
        eval_data=eval_source,
        quant=quant.to_dict(),
        recon=recon.__dict__.copy(),
        machine=machine(),
        cpu=cpu(),
    )


def _scores(result: EvalResult) -> Scores:
    return Scores(result.top1, result.top5, dict(result.fidelity))


def _describe(label: str, result: EvalResult) -> str:
    parts = []
    if result.top1 is not None:
        parts.append(f"top-1 {result.top1:.2f} %")
    if result.fidelity:
        parts += [f"{name} SQNR {f.sqnr_db:.1f} dB" for name, f in result.fidelity.items()]
    return f"{label}: {', '.join(parts)}"


def _evaluate_baselines(float_net: nn.Module, qmodel: nn.Module, run: RunConfig | None,
                        score: Callable[..., EvalResult], report: Report,
                        echo: Callable[..., None]) -> None:
    """Float top-1/top-5 and round-to-nearest's (with its fidelity) into ``report``.

    Round-to-nearest is the quantized model before reconstruction with every weight rounded to
    nearest: the same scales, activation steps and bits as a model built with rounding
    'nearest' (the scale search does not depend on the rounding), without a second search."""
    if run is None or run.eval_float:
        result = score(float_net, None)
        report.float_model = _scores(result)
        if result.top1 is not None:
            echo(_describe("float", result))
    if run is None or run.eval_nearest:
        with round_to_nearest(qmodel):
            result = score(qmodel, float_net)
        report.nearest = _scores(result)
        echo(_describe("round-to-nearest", result))


def learns_nothing(quant: QuantConfig, recon: ReconConfig) -> bool:
    """Whether calibration leaves the quantized model as its round-to-nearest baseline: weights
    and activations rounded to nearest and no iteration to learn anything (the ``nearest``
    recipe). Such a run's quantized scores are the baseline's."""
    return (quant.rounding == "nearest" and quant.act_border == "nearest"
            and recon.iters == 0 and recon.act_stage_iters == 0)


def _quantize(float_net: nn.Module, quant: QuantConfig, mixed: MixedConfig,
              batches: list[Tensor], report: Report, echo: Callable[..., None]
              ) -> tuple[nn.Module, list[Unit]]:
    """The quantized copy with its activation steps initialised, and its reconstruction units;
    size (and the mixed-precision allocation, a step before quantization:
    ``qmodel.bit_allocation``) into ``report``. Bits the user gave per layer
    (``quant.layer_w_bits``) win over an allocation."""
    allocation = None
    if mixed.enabled and not quant.layer_w_bits:
        allocation = allocate_model(float_net, mixed, quant, batches)
    qmodel = quantize_model(float_net, quant, layer_w_bits=(
        allocation.layer_bits() if allocation is not None else None))
    qmodel.bit_allocation = allocation  # mixed.Allocation; None in single precision
    layers = quant_layers(qmodel).values()
    report.size_mb = size_mb([m.layer.weight.numel() for m in layers],
                             [m.weight_quantizer.bits for m in layers])
    if allocation is not None:
        table = mixed_report(allocation, mixed.bit_list, mixed.budget_bits)
        report.mixed = table
        echo(mixed_table(table))
    units = split_units(qmodel, example=batches[0][:2])
    if quant.act_placement == "blocks":
        _place_block_inputs(qmodel, units, batches[0][:2], echo)
    calibrate_activations(qmodel, batches)
    return qmodel, units


def shape_units(units: list[Unit], qmodel: nn.Module, recon: ReconConfig, example: Tensor,
                echo: Callable[..., None] = lambda *args, **kwargs: None) -> list[Unit]:
    """The reconstruction units as ``recon`` shapes them from ``split_units``' list: runs of
    ``unit_blocks`` blocks chained into one unit (``chain_blocks``, ``unit_blocks_in_stage``),
    then the stem and the head joined to the block next to them (``join_end_layers``); each
    step said in one line. ``example``: a calibration batch, for the float forward that checks
    what feeds what."""
    if recon.unit_blocks > 1:
        units = _chained(units, qmodel, recon.unit_blocks, recon.unit_blocks_in_stage,
                         example, echo)
    if recon.join_end_layers:
        units = _joined_ends(units, qmodel, example, echo)
    return units


def _chained(units: list[Unit], qmodel: nn.Module, size: int, in_stage: bool,
             example: Tensor, echo: Callable[..., None]) -> list[Unit]:
    """``recon.unit_blocks``: consecutive blocks joined into units (``chain_blocks``), said in
    one line."""
    blocks = sum(u.rule == "registry" for u in units)
    if not blocks:
        return units  # no registered blocks (units cut from a graph): nothing to chain or say
    chained = chain_blocks(units, qmodel, size, example, in_stage=in_stage)
    joined = sum(len(u.chain) for u in chained)
    echo(f"recon.unit_blocks={size}{' in stage' if in_stage else ''}: {joined} of {blocks} "
         f"blocks joined into {sum(bool(u.chain) for u in chained)} units; "
         f"{len(units)} units -> {len(chained)}")
    return chained


def _joined_ends(units: list[Unit], qmodel: nn.Module, example: Tensor,
                 echo: Callable[..., None]) -> list[Unit]:
    """``recon.join_end_layers``: the stem's and the head's layers joined to the block next to
    them (``join_end_layers``), said in one line."""
    joined = join_end_layers(units, qmodel, example)
    names = [u.name for u in joined if u.kind == "joined"]
    echo(f"recon.join_end_layers: {', '.join(names) or 'nothing joined'}; "
         f"{len(units)} units -> {len(joined)}")
    return joined


def _place_block_inputs(qmodel: nn.Module, units: list[Unit], example: Tensor,
                        echo: Callable[..., None]) -> None:
    """``act_placement="blocks"``: every module unit (a registered block, or a child module
    when the model has none) quantizes its input once (``quant.placement``). Units that are
    regions of the traced graph keep per-layer input quantizers, said in one line."""
    blocks = [u.path for u in units if u.rule in ("registry", "child")]
    regions = sum(u.rule == "graph" for u in units)
    if regions:
        echo(f"act_placement=blocks: {regions} unit(s) are regions of the traced graph, not "
             "modules; their layers keep their own input quantizers")
    place_block_inputs(qmodel, find_block_consumers(qmodel, blocks, example))


def _tensorboard(folder: _RunFolder, source: ModelSource, quant: QuantConfig,
                 recon: ReconConfig, report: Report, units: int
                 ) -> TensorBoardLogger | None:
    if folder.path is None:
        return None
    logger = TensorBoardLogger(str(folder.path), name="tb", version="", default_hp_metric=False)
    if report.mixed is not None and folder.rank == 0:
        title = f"{source.label} mixed {report.mixed.bit_list}"
        figure = save_bits_plot(report.mixed, title, folder.path / "bits_per_layer.png")
        logger.experiment.add_figure("mixed/bits_per_layer", figure, 0)
    logger.log_hyperparams(
        {**{f"quant/{k}": str(v) if isinstance(v, (dict, list)) else v
            for k, v in quant.to_dict().items()},
         **{f"recon/{k}": v for k, v in recon.__dict__.items()},
         "model/arch": source.label, "data/calib_size": report.calib_size, "units": units}
    )
    return logger


def _trainer_factory(recon: ReconConfig, progress: bool, trainer_kwargs: dict[str, Any],
                     logger: TensorBoardLogger | None, path: Path | None
                     ) -> Callable[[BlockSequencer], pl.Trainer]:
    """One fresh Trainer per unit: the user's options plus the ones the reconstruction owns."""
    user = user_trainer_kwargs(trainer_kwargs)

    def make_trainer(sequencer: BlockSequencer) -> pl.Trainer:
        bar = [UnitProgressBar(PROGRESS_REFRESH_PER_SECOND)] if progress else []
        callbacks = [sequencer, *bar]
        return pl.Trainer(
            **user, max_steps=sequencer.unit_iters, max_epochs=1, logger=logger or False,
            callbacks=callbacks, enable_checkpointing=False, limit_val_batches=0,
            num_sanity_val_steps=0, enable_model_summary=False, use_distributed_sampler=False,
            log_every_n_steps=1,  # BlockReconstruction logs its steps' losses itself
            enable_progress_bar=progress,
            default_root_dir=str(path) if path is not None else None,
        )

    return make_trainer


def checkpoint_meta(source: ModelSource, classes: int | None,
                    preprocessing: Preprocessing | None = None) -> dict[str, Any]:
    """What a saved quantized model records about its float architecture and its input
    (``preprocessing``, see ``data.Preprocessing``; None: not known)."""
    recorded = None if preprocessing is None else preprocessing.to_dict()
    return {"arch": source.label, "num_classes": classes, "source": source.to_dict(),
            "preprocessing": recorded}


def _write_run(folder: _RunFolder, qmodel: nn.Module, source: ModelSource, classes: int | None,
               quant: QuantConfig, run: RunConfig, data: Any,
               report: Report) -> None:
    """quantized.pt, report.json and the exports (rank 0); progress.pt goes."""
    began = time.perf_counter()
    meta = checkpoint_meta(source, classes, getattr(qmodel, "preprocessing", None))
    save_quantized(qmodel, folder.path / CHECKPOINT, quant, meta)
    report.write(folder.path / REPORT)
    (folder.path / PROGRESS).unlink(missing_ok=True)  # quantized.pt holds it all now
    if report.wall_seconds is not None:
        report.wall_seconds.write = round(time.perf_counter() - began, 2)
    for fmt in run.export:  # the finished run is on disk; an export error loses nothing
        report.add_check(export_run(folder.path, fmt, data, opset=run.onnx_opset))
    report.write(folder.path / REPORT)  # with the write's time and the exports' checks


@torch.no_grad()
def unit_fidelity(qmodel: nn.Module, float_folded: nn.Module, units: list[Any],
                  batches: list[Tensor]) -> list[UnitFidelity]:
    """Per unit: its output in the quantized model (quantized inputs) against the float
    model's output there, on ``batches``."""
    rows = []
    for unit in units:
        data = build_unit_data(qmodel, float_folded, unit, batches)
        module = unit.module(qmodel)
        stats = FidelityStats()
        for start in range(0, len(data), 256):
            stats.add(data.targets[start : start + 256],
                      module(data.inputs[start : start + 256]))
        rows.append(UnitFidelity(unit.name, stats.result()))
    return rows


@dataclass
class Calibrated:
    """A finished calibration: the frozen quantized model and its report."""

    model: nn.Module
    report: Report


def run_calibration(
    model: nn.Module, data: Any, quant: QuantConfig | None = None,
    recon: ReconConfig | None = None, run: RunConfig | None = None,
    trainer_kwargs: dict[str, Any] | None = None, config_text: str | None = None,
    console: Console | None = None, *, eval_data: Any = None, calib_size: int | None = 1024,
    source: ModelSource | None = None, unit_eval_images: int = 256, progress: bool = True,
    mixed: MixedConfig | None = None,
) -> Calibrated:
    """Quantize ``model`` with block reconstruction; return the quantized model and report.

    Phases: open the run folder (when ``run`` is given) and the DDP ranks, evaluate float and
    round-to-nearest, quantize, reconstruct unit by unit (``progress.pt`` after each when
    there is a folder), evaluate, write. ``calib_size``: how many images to take from a
    loader, iterable or tensor (a ``CalibrationDataModule`` chooses its own); ``eval_data``:
    evaluation batches when ``data`` has none; ``unit_eval_images``: images of the evaluation
    data for the per-unit fidelity; ``progress``: progress bars when there is no ``run`` (a
    ``RunConfig`` has its own); ``mixed``: per-layer weight bits by coding length, chosen
    before quantization (None or no ``bit_list``: single precision).
    """
    began = time.perf_counter()
    with stop_on_signals():
        tally, folder = _Tally(), None
        try:
            job = _resolve_job(
                model,
                data,
                quant,
                recon,
                run,
                trainer_kwargs,
                eval_data,
                calib_size,
                source,
                unit_eval_images,
                progress,
                mixed,
            )
            folder = _open_run_folder(
                job.source, job.quant, run, job.trainer_kwargs, config_text, console or Console()
            )
            try:
                return _reconstruct(job, folder, tally, began)
            finally:
                folder.close()
        except BaseException as exc:
            interrupted = interruption_in(exc)
            if interrupted is None:
                raise
            run_dir = None if folder is None or folder.path is None else str(folder.path)
            message = stopped_message(tally.done, tally.total, run_dir)
            raise interrupted.explained(message) from None


def _resolve_job(
    model: nn.Module | str,
    data: Any,
    quant: QuantConfig | None,
    recon: ReconConfig | None,
    run: RunConfig | None,
    trainer_kwargs: dict[str, Any] | None,
    eval_data: Any,
    calib_size: int | None,
    source: ModelSource | None,
    unit_eval_images: int,
    progress: bool,
    mixed: MixedConfig | None = None,
) -> _Job:
    """Check the settings, the model and the data; nothing is written yet."""
    quiet_lightning()
    trainer_kwargs = dict(trainer_kwargs or {})
    quant = (quant or QuantConfig()).validate()
    mixed = (mixed or MixedConfig()).validate()
    check_mixed_bits(quant.profile, mixed.bit_list if mixed.enabled else None)
    recon = (recon or ReconConfig()).validate()
    if run is not None:
        run.validate()
    check_step_options(quant, recon, trainer_kwargs)
    float_net, source = resolve_model(model, source)
    if isinstance(data, pl.LightningDataModule):
        data.prepare_data()  # before the other ranks exist: one process downloads or unpacks
    inputs = resolve_data(data, calib_size, eval_data)  # bad data or model: nothing written
    classes = check_model_runs(float_net, inputs.batches[0], source)
    if recon.output_weight > 0 and classes is None:
        raise SettingError(f"recon.output_weight={recon.output_weight:g} compares the network's "
                           f"class probabilities, but {source.label} does not return (N, "
                           "classes) logits: set it to 0")
    if not quantizable_layers(float_net):
        raise QuantConfigError(f"{source.label} has no Conv1d, Conv2d or Linear layer to quantize")
    show = run.progress if run is not None else progress
    preprocessing = calibrated_preprocessing(data, inputs.batches[0].shape)  # checked here
    return _Job(
        float_net,
        source,
        quant,
        recon,
        run,
        trainer_kwargs,
        data,
        inputs,
        classes,
        show,
        unit_eval_images,
        preprocessing,
        mixed,
    )


@dataclass
class _Job:
    """A calibration's inputs, resolved and checked before any run folder is touched."""

    float_net: nn.Module
    source: ModelSource
    quant: QuantConfig
    recon: ReconConfig
    run: RunConfig | None
    trainer_kwargs: dict[str, Any]
    data: Any
    inputs: CalibrationInputs
    classes: int | None
    show: bool  # progress bars
    unit_eval_images: int
    preprocessing: Preprocessing | None  # what the model's input is, for the exports
    mixed: MixedConfig = dataclasses.field(default_factory=MixedConfig)  # the bit allocation


@dataclass
class _Tally:
    """How far the reconstruction got: units saved (in progress.pt when there is a folder)
    of ``total`` (None before the units are known)."""

    done: int = 0
    total: int | None = None


def _reconstruct(job: _Job, folder: _RunFolder, tally: _Tally, began: float) -> Calibrated:
    """Evaluate the baselines, reconstruct unit by unit, evaluate and write (see
    ``run_calibration``; ``began``: its ``time.perf_counter()`` at the start, for the
    report's ``wall_seconds``)."""
    float_net, source, quant, recon, run = job.float_net, job.source, job.quant, job.recon, job.run
    trainer_kwargs, data, inputs, classes = job.trainer_kwargs, job.data, job.inputs, job.classes
    batches, show, unit_eval_images = inputs.batches, job.show, job.unit_eval_images
    echo = folder.echo
    images = sum(len(b) for b in batches)
    if recon.batch_size > images:  # a bigger batch only repeats images and costs memory
        echo(f"recon.batch_size={recon.batch_size} is more than the {images} calibration "
             f"images: each step takes {images}")
        recon = dataclasses.replace(recon, batch_size=images)
    settings = {"quant": quant.to_dict(), "mixed": job.mixed.to_dict(), "recon": recon.__dict__,
                "source": source.to_dict()}
    print_ = fingerprint(settings, float_net, batches)
    resuming = run is not None and run.resume is not None
    resumed = load_progress(folder.path, print_) if resuming else None

    def score(net: nn.Module, reference: nn.Module | None) -> EvalResult:
        return evaluate(net, inputs.eval_batches, trainer_kwargs, show, reference)

    report = _new_report(source, sum(len(b) for b in batches), quant, recon, inputs.eval_source)
    if resumed is not None:
        report = Report.from_dict(resumed["report"])
        echo(f"resuming {folder.path}: {len(resumed['units'])} unit(s) already done")

    # before the clock starts: not calibration time
    sampling = time.perf_counter()
    clock = ReferenceClock(host_speed()) if run is None or run.host_speed else None
    report.host_speed = clock.start if clock is not None else None
    started = time.perf_counter()
    wall = report.wall_seconds = WallSeconds(setup=round(sampling - began, 2),
                                             host_speed=round(started - sampling, 2))
    elapsed_before = resumed["elapsed"] if resumed is not None else 0.0
    qmodel, units = _quantize(float_net, quant, job.mixed, batches, report, echo)
    units = shape_units(units, qmodel, recon, batches[0][:2], echo)
    folded = copy.deepcopy(float_net).eval()
    fold_batchnorms(folded)
    report.float_ops = float_ops(qmodel)  # what stays float outside Conv/Linear layers
    report.never_run_layers = list(qmodel.never_run_layers)  # no data reaches them: float
    report.unit_rules = {rule: sum(u.rule == rule for u in units)
                            for rule in dict.fromkeys(u.rule for u in units)}
    # one pass over the units, or BRECQ's two (the rounding, then the activation steps)
    stages = ("rounding", "activations") if recon.act_stage_iters > 0 else ("joint",)
    sequence = units * len(stages)  # the order the units finish in
    if resumed is not None:
        restore_progress(qmodel, sequence, resumed)
    logger = _tensorboard(folder, source, quant, recon, report, len(units))

    tally.total, tally.done = len(sequence), len(resumed["units"]) if resumed is not None else 0

    def checkpoint(results: list[UnitResult]) -> None:
        nonlocal started
        elapsed = elapsed_before + time.perf_counter() - started
        if clock is not None:
            lap = clock.lap(elapsed)  # re-sampling the index is not calibration time
            started += lap
            wall.host_speed = round(wall.host_speed + lap, 2)
        if folder.writes:
            try:
                save_progress(folder.path, qmodel, results, report, elapsed, print_)
            except DiskFullError as exc:
                raise DiskFullError(f"{exc}; {_kept(tally.done, folder.path)}") from None
        tally.done = len(results)

    hint = f"Finished units are kept: continue with --run.resume {folder.path}"
    done = ([UnitResult.from_dict(r) for r in resumed["results"]]
            if resumed is not None else [])
    results: list[UnitResult] = []
    shards = shard(batches, folder.rank, folder.world)
    make_trainer = _trainer_factory(recon, show, trainer_kwargs, logger, folder.path)
    for k, stage in enumerate(stages):
        stage_done = done[k * len(units) : (k + 1) * len(units)]
        sequencer = BlockSequencer(
            qmodel, folded, units, shards, recon, make_trainer, seed=quant.seed,
            logger=logger, echo=echo,
            on_unit_done=lambda stage_results, before=tuple(results): checkpoint(
                [*before, *stage_results]),
            resume_hint=hint if folder.path is not None else "", total=images, stage=stage,
        )
        if k == 0:
            sequencer.preflight(stage_done)  # every unit's memory, before any work
            if resumed is None:  # a resumed run has them in its report already
                paused = time.perf_counter()
                _evaluate_baselines(float_net, qmodel, run, score, report, echo)
                evaluated = time.perf_counter() - paused
                started += evaluated  # evaluation is not calibration time
                wall.baselines = round(evaluated, 2)
            each = (f"{recon.iters} iterations each" if recon.plateau_gain == 0 else
                    f"{recon.iters} iterations each, fewer or more by the loss "
                    f"(adaptive budget, plateau gain {recon.plateau_gain:g})")
            echo(f"{len(units)} units, {each} at batch {recon.batch_size}"
                 + (", activations float" if stage == "rounding" else ""))
        elif not stage_done:  # BRECQ: the steps start again from the weight-quantized network
            calibrate_activations(qmodel, batches, quantized_weights=True)
            echo("activation steps searched again with the weights quantized")
            echo(f"{len(units)} units, {recon.act_stage_iters} iterations each for the steps")
        results += sequencer.run(done=stage_done)
    report.units = results
    calibrated = time.perf_counter() - started
    wall.calibration = round(calibrated, 2)
    report.calib_seconds = round(elapsed_before + calibrated, 2)
    if clock is not None:
        report.host_speed = clock.speed()
        report.calib_reference_iters = round(clock.reference_iters(report.calib_seconds))
    if resumed is not None:
        report.resumed_after_units = len(resumed["units"])
    evaluating = time.perf_counter()
    qmodel.eval()
    if report.nearest is not None and learns_nothing(quant, recon):
        # the same model as the round-to-nearest baseline: not evaluated a second time
        report.quantized = copy.deepcopy(report.nearest)
        echo("quantized = round-to-nearest (nothing learned): its scores are the baseline's")
    else:
        report.quantized = _scores(score(qmodel, float_net))
    unit_batches = _first_images(inputs.eval_batches, unit_eval_images)
    report.unit_fidelity_data = inputs.eval_source
    if any(b.shape[1:] != batches[0].shape[1:] for b in unit_batches):
        # graph units are built for the calibration images' size (sizes baked into regions)
        unit_batches = _first_images(batches, unit_eval_images)
        report.unit_fidelity_data = "calibration images (evaluation images differ in size)"
    report.unit_fidelity = unit_fidelity(qmodel, folded, units, unit_batches)
    wall.evaluation = round(time.perf_counter() - evaluating, 2)
    report.peak_rss_mb = round(peak_rss_mb(), 1)
    if folder.path is not None:
        report.run_dir = str(folder.path)
    if folder.world > 1:
        report.devices = folder.world
    if logger is not None:
        if report.quantized.top1 is not None:
            logger.experiment.add_scalar("eval/quant_top1", report.quantized.top1, 0)
        logger.finalize("success")
    qmodel.float_source = source  # what save/load record about the float architecture
    qmodel.output_classes = classes
    qmodel.preprocessing = job.preprocessing  # what its input is
    if folder.writes:  # every rank holds the same frozen model and metrics
        _write_run(folder, qmodel, source, classes, quant, run, data, report)
    if folder.rank == 0:
        echo(summary_table(report))
    return Calibrated(qmodel, report)


def _kept(done: int, run_dir: Path) -> str:
    """What a stopped run keeps, for an error message."""
    if done == 0:
        return "no unit was saved yet: free space and start the run again"
    kept = "unit 1 is" if done == 1 else f"units 1-{done} are"
    return (
        f"{kept} kept in {run_dir / PROGRESS}: free space and continue with --run.resume {run_dir}"
    )


def _first_images(batches: Any, count: int) -> list[Tensor]:
    """The first ``count`` images of evaluation batches (labels dropped)."""
    out, seen = [], 0
    for batch in batches:
        x, _ = split_batch(batch)
        out.append(x[: count - seen])
        seen += out[-1].shape[0]
        if seen >= count:
            break
    return out


def calibrate(
    model: nn.Module, data: Any, quant: QuantConfig | None = None,
    recon: ReconConfig | None = None, run: RunConfig | None = None,
    trainer_kwargs: dict[str, Any] | None = None, config_text: str | None = None,
    console: Console | None = None, **kwargs: Any,
) -> Report:
    """``run_calibration`` with a run folder (``RunConfig()`` when ``run`` is None); returns
    the report (the CLI's job). ``attnround_pl.quantize`` returns the quantized model."""
    run = run if run is not None else RunConfig()
    return run_calibration(model, data, quant, recon, run, trainer_kwargs, config_text,
                           console, **kwargs).report


def summary_table(report: Report) -> Table:
    """Float, round-to-nearest and calibrated top-1 / top-5 (with labels) and output SQNR,
    with the calibration time."""
    w_bits = report.mixed.bit_list if report.mixed is not None else report.w_bits
    title = f"{report.model} W{w_bits}A{report.a_bits}: {report.calib_size} calibration images"
    table = Table(title=title, caption=report.wall_time_line())
    quantized = report.quantized or Scores()
    tops = [k for k in ("top1", "top5") if getattr(quantized, k) is not None]
    columns = ["model", *(f"top-{k[3]} %" for k in tops), "output SQNR dB", "calibration s"]
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right")

    def row(label: str, scores: Scores | None, seconds: str = "") -> None:
        if scores is None or (scores.top1 is None and not scores.fidelity):
            return
        cells = [f"{getattr(scores, k):.2f}" if getattr(scores, k) is not None else ""
                 for k in tops]
        sqnr = ", ".join(f"{f.sqnr_db:.1f}" for f in scores.fidelity.values())
        table.add_row(label, *cells, sqnr, seconds)

    row("float", report.float_model)
    row("round-to-nearest", report.nearest)
    row(report.rounding, report.quantized, f"{report.calib_seconds:.0f}")
    onnx = report.onnx
    if onnx is not None and onnx.top1 is not None:
        label = (f"{report.rounding}, ONNX in onnxruntime "
                 f"({onnx.argmax_mismatch} predictions differ)")
        table.add_row(label, f"{onnx.top1:.2f}", *["-"] * (len(tops) - 1), "", "")
    return table
