"""Where the time of a reconstruction step goes: torch.profiler over the steady steps of one
unit's Lightning fit (what ``calibrate`` runs), the profiled time split into what the step does.

    .venv/bin/python benchmarks/profile_step.py [--model resnet20] [--unit conv1..layer1.1]
        [--iters 500] [--batch 64] [--unit-blocks 2] [--no-join-end-layers]

The profiler starts at the second training batch (the first holds set-up) and stops at the end
of the fit. Each profiled operator is counted once, in the first of these it lies inside
(outermost wins): the convolutions' backward (``aten::convolution_backward``) and forward
(``aten::convolution``), ``Optimizer.step`` (Adam, and eq. 6 in its pre-hook), the activation
quantizers (their forward, marked by hooks on ``ActQuantizer``, and the backward of their
rounding Function), the weight quantizers' forward (marked the same way), gathering the
step's batch from the cache (``aten::index_select``), the loss
(``aten::mse_loss`` forward and backward). The rest of the profiled wall time (the other
operators, Python, Lightning) is "the rest". Prints a markdown table and writes
``benchmarks/results/profile_<model>_<unit>.json``. The shares are of the profiled time, which
the profiler itself slows down; the steps per second without it come from ``speed.py``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import lightning.pytorch as pl
import torch
from result_json import script_command, write_result
from speed import (
    ROOT,
    add_act_border_option,
    border_suffix,
    calibration_batches,
    prepared_units,
)
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

from attnround_pl.calib import BlockReconstruction, build_unit_data
from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.reconstruction import STEPS_PER_BATCH
from attnround_pl.calib.settings import ReconConfig
from attnround_pl.models import EMBEDDED
from attnround_pl.quant import ActQuantizer, WeightQuantizer

ACT_QUANT_MARK = "ActQuantizer.forward"
W_QUANT_MARK = "WeightQuantizer.forward"

# (category, does this operator name open it?) in the table's order
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("convolutions, backward", ("aten::convolution_backward",)),
    ("convolutions, forward", ("aten::convolution",)),
    ("Optimizer.step (Adam; eq. 6 in its pre-hook)", ("Optimizer.step",)),
    ("activation quantizers, forward and backward", (ACT_QUANT_MARK, "_LSQRoundBackward",
                                                     "_BorderRoundBackward")),
    ("weight quantizers, forward (the rounding; its backward is in the rest)", (W_QUANT_MARK,)),
    ("gathering the step's batch from the cache (aten::index_select)", ("aten::index_select",)),
    ("the loss, forward and backward", ("aten::mse_loss", "MseLossBackward")),
]
REST = "the rest (other operators, Python, Lightning)"


def category(name: str) -> str | None:
    """The category an operator or range of this name opens, or None. ``aten::convolution``
    matches itself only, not ``aten::convolution_backward``; autograd's wrapper names
    (``autograd::engine::evaluate_function: X``) match by what they evaluate."""
    for label, keys in CATEGORIES:
        for key in keys:
            if name == key or name.startswith(key + "#") or name.endswith(": " + key):
                return label
            if key.endswith("Backward") and key in name:
                return label
    return None


def split_time(events: Iterable[FunctionEvent]) -> dict[str, float]:
    """Microseconds per category: each categorised event's inclusive CPU time, unless one of
    its ancestors is categorised already (then that ancestor holds it)."""
    totals = {label: 0.0 for label, _ in CATEGORIES}
    for event in events:
        label = category(event.name)
        if label is None:
            continue
        parent = event.cpu_parent
        while parent is not None and category(parent.name) is None:
            parent = parent.cpu_parent
        if parent is None:
            totals[label] += event.cpu_time_total
    return totals


class MarkQuantizers:
    """Marks every ``ActQuantizer`` and ``WeightQuantizer`` forward of ``unit`` as a profiler
    range of that name (hooks, removed by ``remove``)."""

    MARKS = {ActQuantizer: ACT_QUANT_MARK, WeightQuantizer: W_QUANT_MARK}

    def __init__(self, unit: torch.nn.Module) -> None:
        self.handles = []
        for module in unit.modules():
            if type(module) in self.MARKS:
                self.handles.append(module.register_forward_pre_hook(self._enter))
                self.handles.append(module.register_forward_hook(self._exit))
        self.open: list[record_function] = []

    def _enter(self, module: torch.nn.Module, args: tuple) -> None:
        mark = record_function(self.MARKS[type(module)])
        mark.__enter__()
        self.open.append(mark)

    def _exit(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.open.pop().__exit__(None, None, None)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ProfileSteadySteps(pl.Callback):
    """torch.profiler from the start of the second training batch to the end of the fit, and
    the steps it saw (a batch holds one step's sample indices per step)."""

    def __init__(self) -> None:
        self.profiler = profile(activities=[ProfilerActivity.CPU])
        self.started = 0.0
        self.seconds = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: object, batch_idx: int) -> None:
        if batch_idx == 1:
            self.profiler.__enter__()
            self.started = time.perf_counter()
        if batch_idx >= 1:
            self.steps += len(batch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.started
        self.profiler.__exit__(None, None, None)


def profile_unit(model: str, unit_name: str | None, iters: int, batch: int,
                 unit_blocks: int = ReconConfig.unit_blocks,
                 join_ends: bool = ReconConfig.join_end_layers, calib: int = 256,
                 root: Path = ROOT / "data", weights: str | None = "DEFAULT",
                 act_border: str | None = None) -> dict:
    """Profile ``unit_name`` (default: the first unit) of the embedded ``model`` (``weights``,
    ``quant.act_border``: None, the default's) on ``calib`` Fashion-MNIST calibration images
    under ``root``; returns the unit, steps, ms per step under the profiler, and the share of
    each category."""
    if model not in EMBEDDED:
        raise SystemExit(f"{model}: profile_step profiles the embedded models "
                         f"({', '.join(EMBEDDED)})")
    batches = calibration_batches(model, "fmnist", calib, 28, root)
    qmodel, folded, units = prepared_units(model, batches, weights, unit_blocks, join_ends,
                                           act_border)
    names = [u.name for u in units]
    if unit_name is None:
        unit_name = names[0]
    if unit_name not in names:
        raise SystemExit(f"--unit {unit_name}: not a unit of {model} with these units; "
                         f"its units: {', '.join(names)}")
    spec = units[names.index(unit_name)]
    data = build_unit_data(qmodel, folded, spec, batches, "cpu")
    unit = spec.module(qmodel)
    module = BlockReconstruction(unit, data, spec.name, iters=iters, batch_size=batch)
    clock = ProfileSteadySteps()
    marks = MarkQuantizers(unit)
    trainer = pl.Trainer(max_steps=iters, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1,
                         callbacks=[clock])
    trainer.fit(module)
    marks.remove()
    steps = clock.steps
    profiled_us = clock.seconds * 1e6
    split = split_time(clock.profiler.events())
    split[REST] = max(0.0, profiled_us - sum(split.values()))
    return {"model": model, "unit": unit_name, "iters": iters, "batch": batch,
            "unit_blocks": unit_blocks, "join_end_layers": join_ends,
            "act_border": next(m.border_kind for m in unit.modules()
                               if isinstance(m, ActQuantizer)),
            "profiled_steps": steps, "ms_per_step_profiled": profiled_us / 1e3 / steps,
            "share_percent": {k: 100 * v / profiled_us for k, v in split.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--unit", default=None, help="a unit's name (default: the first)")
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    recipe = ReconConfig()
    parser.add_argument("--unit-blocks", type=int, default=recipe.unit_blocks)
    parser.add_argument("--join-end-layers", action=argparse.BooleanOptionalAction,
                        default=recipe.join_end_layers)
    add_act_border_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.iters <= 2 * STEPS_PER_BATCH:
        parser.error(f"--iters {args.iters}: more than {2 * STEPS_PER_BATCH} (the profile "
                     f"leaves out the first batch's {STEPS_PER_BATCH} steps)")
    if args.unit_blocks < 1:
        parser.error(f"--unit-blocks {args.unit_blocks}: at least 1")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    result = profile_unit(args.model, args.unit, args.iters, args.batch, args.unit_blocks,
                          args.join_end_layers, act_border=args.act_border)
    print(f"{result['model']} `{result['unit']}`, batch {result['batch']}, "
          f"{result['profiled_steps']} steps profiled, "
          f"{result['ms_per_step_profiled']:.2f} ms a step under the profiler\n")
    print("| what | share of the step |\n| --- | ---: |")
    for label, share in result["share_percent"].items():
        print(f"| {label} | {share:.0f} % |")
    result.update(machine=machine(), torch_threads=torch.get_num_threads(),
                  command=script_command("profile_step.py", None))
    write_result(args.out / f"profile_{args.model}_{result['unit']}"
                 f"{border_suffix(args.act_border)}.json", result)


if __name__ == "__main__":
    main()
