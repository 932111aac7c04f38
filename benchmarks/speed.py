"""Speed benchmark: one reconstruction iteration per unit against the float unit's own
forward + backward at the same batch (the floor no implementation can beat).

For each unit of the embedded model: seconds per iteration of ``BlockReconstruction`` through a
Lightning Trainer (what ``calibrate`` runs), of the same module in a bare PyTorch loop, and of
the BN-folded float unit's forward + backward (gradients w.r.t. its weights). Prints a markdown
table and writes ``benchmarks/results/speed_<model>.json``.

    .venv/bin/python benchmarks/speed.py [--model resnet20] [--iters 200] [--batch 64]
        [--accelerator cpu|gpu] [--compile off|default|reduce-overhead|max-autotune]
        [--cuda-graph] [--as-run]

The embedded models are timed on Fashion-MNIST calibration images. ``--images random`` times
any model of the zoo on random images of ``--image-size`` pixels with random weights (timing
does not depend on the values): how the ratio behaves at ImageNet scale, where the convolutions
are larger than the elementwise work of the quantizers, e.g.
``--model resnet18 --images random --image-size 224 --iters 10 --calib 64``.

``--compile MODE`` runs the unit's forward and backward through ``torch.compile`` in both the
Lightning and the bare loop (``recon.compile`` of ``calibrate``). The Lightning column is the
whole fit over ``--iters`` (set-up and, with ``--compile``, compilation included); the steady
column leaves out the first step, which is where set-up and compilation happen.
``--as-run`` gives the Lightning fit what ``calibrate`` adds to it: its progress bar and a
TensorBoard logger (in a temporary folder).
``--cuda-graph`` (with ``--accelerator gpu``) replays each unit's whole step from a CUDA graph
in both loops (``recon.cuda_graph``; the graph is recorded in the first step).
The units are the default recipe's (``recon.unit_blocks 2``, ``recon.join_end_layers true``:
two consecutive blocks a unit, the stem and the head joined to the block next to them);
``--unit-blocks 1 --no-join-end-layers`` times one block a unit with the ends apart (the
default until 2026-12-03; the other recipes' units), and the file name says so. The
activation quantizers learn the default recipe's AQuant border; ``--act-border nearest`` times
them without it (the other recipes', and the default's until 2026-12-04).
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from result_json import script_command, write_result

from attnround_pl.calib import BlockReconstruction, build_unit_data
from attnround_pl.calib.graph_step import GraphedStep
from attnround_pl.calib.pipeline import PROGRESS_REFRESH_PER_SECOND, machine, shape_units
from attnround_pl.calib.progress import UnitProgressBar
from attnround_pl.calib.reconstruction import (
    COMPILE_MODES,
    STEPS_PER_BATCH,
    use_runtime_cuda_check,
)
from attnround_pl.calib.settings import ReconConfig
from attnround_pl.calib.step import Losses, optimizer_step, step_losses
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.models import (
    EMBEDDED,
    Unit,
    build_model,
    split_units,
)
from attnround_pl.quant import (
    QuantConfig,
    active_roundings,
    calibrate_activations,
    fold_batchnorms,
    quantize_model,
    reconstruction_loss,
    set_learning,
)
from attnround_pl.quant.act_border import BORDERS

ROOT = Path(__file__).resolve().parents[1]


def bare_step(losses: Callable[[torch.Tensor, torch.Tensor], Losses],
              opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One reconstruction iteration without Lightning: the step ``BlockReconstruction`` runs
    (``calib.step.optimizer_step``; eq. 6 by the optimizer's pre-hook)."""
    optimizer_step(losses, opt, x, y)


class SteadyClock(pl.Callback):
    """Seconds from the start of the second training batch to the end of the last, and the
    steps they ran: the fit without its first batch (one or ``steps_per_batch`` steps), where
    set-up and compilation happen."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = 0.0
        self.seconds = 0.0
        self.skipped = 1  # steps in the first batch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: object, batch_idx: int) -> None:
        if batch_idx == 1:
            synchronize(self.device)
            self.started = time.perf_counter()
            self.skipped = getattr(pl_module, "steps_per_batch", 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.started


def float_step(unit: torch.nn.Module, weights: list[torch.Tensor], x: torch.Tensor,
               y: torch.Tensor) -> None:
    """The float unit's forward + backward (gradients w.r.t. its weights)."""
    for p in weights:
        p.grad = None
    reconstruction_loss(unit(x), y).backward()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously), so a clock read after it
    counts them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_iter(fn, iters: int, device: torch.device) -> float:
    fn()  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / iters


def calibration_batches(model: str, images: str, count: int, size: int,
                        root: Path = ROOT / "data") -> list[torch.Tensor]:
    """``count`` Fashion-MNIST calibration images (under ``root``), or random ones (N(0, 1),
    ``size`` pixels, 3 channels for torchvision models, 1 for the embedded ones), in batches of
    up to 256."""
    if images == "fmnist":
        if model not in EMBEDDED:
            raise SystemExit(f"{model}: no ImageNet here; time it with --images random")
        data = FashionMNISTDataModule(root=str(root), calib_size=count)
        return [x for x, _ in data.calib_dataloader(256)]
    channels = 1 if model in EMBEDDED else 3
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(min(256, count - i), channels, size, size, generator=gen)
            for i in range(0, count, 256)]


def prepared_units(model: str, batches: list[torch.Tensor], weights: str | None,
                   unit_blocks: int, join_ends: bool, act_border: str | None = None
                   ) -> tuple[torch.nn.Module, torch.nn.Module, list[Unit]]:
    """The quantized model (default settings but ``act_border``, None: the default's; the
    activation steps observed on ``batches``), the BN-folded float model, and the units of
    ``recon.unit_blocks`` and ``recon.join_end_layers``: what a unit's reconstruction starts
    from."""
    qmodel = quantize_model(build_model(model, weights=weights),
                            QuantConfig(act_border=act_border))
    calibrate_activations(qmodel, batches)
    folded = build_model(model, weights=weights)
    fold_batchnorms(folded)
    units = shape_units(split_units(qmodel), qmodel,
                        ReconConfig(unit_blocks=unit_blocks, join_end_layers=join_ends),
                        batches[0][:2])
    return qmodel, folded, units


class LearningUnit(NamedTuple):
    """One unit of the default recipe set up for bare-loop steps (``bare_units``): its spec,
    optimizer (``BlockReconstruction``'s, eq. 6 in its pre-hook), the step's losses
    (``losses(x, y)``), one batch of its cached inputs ``x`` and targets ``y``, and the
    BN-folded float model (``spec.module(folded)`` is the float unit)."""

    spec: Unit
    opt: torch.optim.Optimizer
    losses: Callable[[torch.Tensor, torch.Tensor], Losses]
    x: torch.Tensor
    y: torch.Tensor
    folded: torch.nn.Module

    def float_call(self) -> Callable[[], None]:
        """The float unit's forward + backward on the unit's batch (``float_step``)."""
        float_unit = self.spec.module(self.folded).eval()
        weights = [p.requires_grad_(True) for p in float_unit.parameters()]
        return partial(float_step, float_unit, weights, self.x, self.y)


def bare_units(model: str, images: str, steps: int, batch: int,
               max_units: int | None = None) -> Iterator[LearningUnit]:
    """Each unit of the embedded ``model`` with the default recipe's units (the first
    ``max_units``), set up for bare-loop steps of ``batch`` on 256 calibration images
    (``images``: Fashion-MNIST and the committed weights, or random images and random weights;
    timing does not depend on the values); after the caller is done with one, the unit learns
    no more and gets its starting values back. As a calibration's fit does, it turns off the
    NVML probe with which Lightning's environment makes every ``Adam.step`` ask for a CUDA
    device (``use_runtime_cuda_check``): no fit runs here to do it."""
    use_runtime_cuda_check()
    batches = calibration_batches(model, images, 256, 28)
    recipe = ReconConfig()  # the default recipe's units
    weights = "DEFAULT" if images == "fmnist" else None
    qmodel, folded, units = prepared_units(model, batches, weights, recipe.unit_blocks,
                                           recipe.join_end_layers)
    for spec in units[:max_units]:
        data = build_unit_data(qmodel, folded, spec, batches, "cpu")
        unit = spec.module(qmodel)
        saved = copy.deepcopy(unit.state_dict())
        module = BlockReconstruction(unit, data, spec.name, iters=steps, batch_size=batch)
        opt = module.configure_optimizers()
        set_learning(unit, batch)
        losses = partial(step_losses, unit.forward, active_roundings(unit))
        yield LearningUnit(spec, opt, losses, data.inputs[:batch], data.targets[:batch], folded)
        set_learning(unit, None)
        unit.load_state_dict(saved)


def measure(model: str, batches: list[torch.Tensor], iters: int, batch: int,
            weights: str | None = "DEFAULT", accelerator: str = "cpu",
            compile: str = "off", cuda_graph: bool = False, as_run: bool = False,
            scratch: str | None = None, unit_blocks: int = ReconConfig.unit_blocks,
            join_ends: bool = ReconConfig.join_end_layers,
            act_border: str | None = None) -> list[dict]:
    """Per unit: ms per iteration through Lightning, in a bare loop, and of the float unit's
    forward + backward; prints one markdown row per unit as it is measured. With
    ``accelerator='gpu'`` the unit's cache lives on the GPU (as ``recon.cache_device: auto``
    puts it when it fits) and each unit is moved there for its timings, then back. ``compile``:
    a ``torch.compile`` mode for the unit's forward and backward in both loops, or 'off';
    ``cuda_graph``: both loops replay the whole step from a CUDA graph; ``as_run``: the
    Lightning fit shows ``calibrate``'s progress bar and logs to TensorBoard (in ``scratch``);
    ``unit_blocks``, ``join_ends``: the units of ``recon.unit_blocks`` and
    ``recon.join_end_layers``; ``act_border``: ``quant.act_border`` (None: the default's)."""
    if iters <= STEPS_PER_BATCH:
        raise ValueError(f"iters={iters}: the steady column needs more than the first batch's "
                         f"{STEPS_PER_BATCH} steps")
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    qmodel, folded, units = prepared_units(model, batches, weights, unit_blocks, join_ends,
                                           act_border)
    rows = []
    print("| unit | Lightning ms/iter | steady | bare loop ms/iter | float fwd+bwd ms | "
          "ratio (steady / float) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for unit_spec in units:
        data = build_unit_data(qmodel, folded, unit_spec, batches, str(device))
        unit = unit_spec.module(qmodel)
        saved = copy.deepcopy(unit.state_dict())
        module = BlockReconstruction(unit, data, unit_spec.name, iters=iters,
                                     batch_size=batch, compile=compile,
                                     cuda_graph=cuda_graph)
        clock = SteadyClock(device)
        # as_run: what ``calibrate`` adds, a progress bar and a TensorBoard logger
        bar = [UnitProgressBar(PROGRESS_REFRESH_PER_SECOND)] if as_run else []
        logger = TensorBoardLogger(scratch, name="tb", version=unit_spec.name) if as_run else False
        trainer = pl.Trainer(max_steps=iters, max_epochs=1, logger=logger,
                             enable_checkpointing=False, enable_progress_bar=as_run,
                             enable_model_summary=False, accelerator=accelerator,
                             devices=1, callbacks=[clock, *bar], log_every_n_steps=1)
        started = time.perf_counter()
        trainer.fit(module)  # the Trainer moves the unit to the device and back
        synchronize(device)
        lightning_s = (time.perf_counter() - started) / iters
        steady_s = clock.seconds / (iters - clock.skipped)
        unit.load_state_dict(saved)
        module.to(device)  # the unit, and the module's own idea of its device

        opt = module.configure_optimizers()
        x, y = data.inputs[:batch], data.targets[:batch]
        set_learning(unit, batch)
        roundings = active_roundings(unit)
        forward = unit.forward
        if compile != "off":
            torch.compiler.reset()
            forward = torch.compile(unit.forward, mode=compile, dynamic=False)
        if cuda_graph:
            bare_s = per_iter(partial(GraphedStep(unit, opt), x, y), iters, device)
        else:
            losses = partial(step_losses, forward, roundings)
            bare_s = per_iter(partial(bare_step, losses, opt, x, y), iters, device)
        torch.compiler.reset()
        set_learning(unit, None)
        unit.load_state_dict(saved)
        unit.to("cpu")  # the next unit's cache is captured through the whole model on the host
        float_unit = unit_spec.module(folded).eval()  # the same paths in the folded model
        float_unit.to(device)
        float_params = [p.requires_grad_(True) for p in float_unit.parameters()]
        float_s = per_iter(partial(float_step, float_unit, float_params, x, y), iters, device)
        float_unit.to("cpu")
        row = {"unit": unit_spec.name, "lightning_ms": 1e3 * lightning_s,
               "lightning_steady_ms": 1e3 * steady_s, "bare_ms": 1e3 * bare_s,
               "float_fwd_bwd_ms": 1e3 * float_s, "ratio": lightning_s / float_s,
               "ratio_steady": steady_s / float_s}
        rows.append(row)
        print(table_line(row, {"unit": "", "lightning_ms": ".2f", "lightning_steady_ms": ".2f",
                               "bare_ms": ".2f", "float_fwd_bwd_ms": ".2f",
                               "ratio_steady": ".2f"}), flush=True)
    return rows


def table_line(row: dict, formats: dict[str, str]) -> str:
    """``row``'s values under ``formats``' keys, each in its format spec, as a markdown row."""
    return "| " + " | ".join(format(row[key], spec) for key, spec in formats.items()) + " |"


def totals(rows: list[dict]) -> dict[str, float]:
    keys = ("lightning_ms", "lightning_steady_ms", "bare_ms", "float_fwd_bwd_ms")
    return {k: sum(r[k] for r in rows) for k in keys}


def add_bare_loop_options(parser: argparse.ArgumentParser, steps_help: str,
                          images_help: str = "random: random images and weights (as speed.py "
                          "--images random)") -> None:
    """The options of the scripts that time the default recipe's units in a bare loop
    (``bare_units``): ``--model``, ``--rounds``, ``--steps`` (``steps_help``), ``--max-units``,
    ``--images`` and ``--out``."""
    parser.add_argument("--model", choices=EMBEDDED, default="resnet20")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help=steps_help)
    parser.add_argument("--max-units", type=int, default=None, help="the first N units only")
    parser.add_argument("--images", choices=("fmnist", "random"), default="fmnist",
                        help=images_help)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")


def add_act_border_option(parser: argparse.ArgumentParser) -> None:
    """``--act-border``, defaulting to the default recipe's resolved border."""
    default = QuantConfig().validate().act_border
    parser.add_argument("--act-border", choices=BORDERS, default=default,
                        help="the activation quantizers' border (quant.act_border; default "
                             f"{default}, the default recipe's)")


def border_suffix(border: str) -> str:
    """A result file's name part for ``border``: none for the default recipe's."""
    return "" if border == QuantConfig().validate().act_border else f"_border-{border}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", choices=("fmnist", "random"), default="fmnist")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--calib", type=int, default=256, help="calibration images cached")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="off")
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--as-run", action="store_true",
                        help="the Lightning fit as calibrate runs it: progress bar, TensorBoard")
    recipe = ReconConfig()  # the default recipe's units, as users run it
    parser.add_argument("--unit-blocks", type=int, default=recipe.unit_blocks,
                        help="consecutive blocks a unit (recon.unit_blocks; default "
                             f"{recipe.unit_blocks}, the default recipe's)")
    parser.add_argument("--join-end-layers", action=argparse.BooleanOptionalAction,
                        default=recipe.join_end_layers,
                        help="the stem and the head joined to the block next to them "
                             "(recon.join_end_layers; default: the default recipe's, "
                             f"{recipe.join_end_layers})")
    add_act_border_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.unit_blocks < 1:
        parser.error(f"--unit-blocks {args.unit_blocks}: at least 1")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: torch sees no CUDA device on this machine")
    if args.cuda_graph and (args.accelerator != "gpu" or args.compile != "off"):
        parser.error("--cuda-graph needs --accelerator gpu and no --compile")
    if args.iters <= STEPS_PER_BATCH:
        parser.error(f"--iters {args.iters}: more than {STEPS_PER_BATCH} (the steady column "
                     f"leaves out the first batch's steps)")
    if args.calib < args.batch:
        parser.error(f"--calib {args.calib} holds fewer images than one --batch {args.batch}")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    batches = calibration_batches(args.model, args.images, args.calib, args.image_size)
    weights = "DEFAULT" if args.images == "fmnist" else None
    with tempfile.TemporaryDirectory() as scratch:
        rows = measure(args.model, batches, args.iters, args.batch, weights, args.accelerator,
                       args.compile, args.cuda_graph, args.as_run, scratch,
                       args.unit_blocks, args.join_end_layers, args.act_border)
    total = totals(rows)
    print(f"| all units | {total['lightning_ms']:.2f} | {total['lightning_steady_ms']:.2f} | "
          f"{total['bare_ms']:.2f} | {total['float_fwd_bwd_ms']:.2f} | "
          f"{total['lightning_steady_ms'] / total['float_fwd_bwd_ms']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "batch": args.batch, "iters": args.iters,
              "images": args.images, "image_size": list(batches[0].shape[1:]),
              "calib": args.calib, "accelerator": args.accelerator, "compile": args.compile,
              "cuda_graph": args.cuda_graph, "as_run": args.as_run,
              "unit_blocks": args.unit_blocks, "join_end_layers": args.join_end_layers,
              "act_border": args.act_border, "rows": rows,
              "total": total, "machine": machine(),
              "torch_threads": torch.get_num_threads(),
              "command": script_command("speed.py", None)}
    suffix = "" if args.images == "fmnist" else f"_random{args.image_size}"
    suffix += "_gpu" if args.accelerator == "gpu" else ""
    suffix += "" if args.compile == "off" else f"_compile-{args.compile}"
    suffix += "_cudagraph" if args.cuda_graph else ""
    suffix += "_as-run" if args.as_run else ""
    # units other than the default recipe's are named in the file
    suffix += f"_blocks{args.unit_blocks}" if args.unit_blocks != recipe.unit_blocks else ""
    suffix += "" if args.join_end_layers == recipe.join_end_layers else (
        "_join" if args.join_end_layers else "_ends-apart")
    suffix += border_suffix(args.act_border)
    write_result(args.out / f"speed_{args.model}{suffix}.json", result)


if __name__ == "__main__":
    main()
