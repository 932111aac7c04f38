"""How often is AQuant's border shrink at work, and what does it cost then? (issue 31)

The border keeps ``0.5 + k x~ + c`` in (0, 1) by scaling its per-channel (k, c) down where
``|k| reach + |c|`` comes near 0.5 (``attnround_pl.quant.act_border``). On the CPU its
per-channel operations, forward and backward, are skipped where the shrink is 1 on every
channel (``_shrink_is_idle``), as every border starts. Computing the shrink for a whole unit at
once (multi-tensor operations in the optimizer's pre-hook, as eq. 6 is) could save only what
these operations cost on the quantizer-steps where the shrink is at work. This script measures
both factors of that upper bound:

- **how often**: one calibration of the default recipe per ``--settings`` entry, as
  ``attnround-pl calibrate`` runs it (in this process, a temporary run folder), counting for
  each unit the quantizer-steps of its reconstruction (``BlockReconstruction.reconstruction_step``)
  and those where the shrink was at work, the same in the unit's first 200 steps (the fit
  ``speed.py`` times), and the first step at work;
- **what it costs**: every unit of the default recipe, one reconstruction step in a bare loop
  (``calib.step.optimizer_step``) as it runs (the shrink idle, skipped) and with the shrink's
  operations computed on every quantizer (the values are the same: the shrink is 1), in turn
  within each round (which goes first alternates), and the float unit's forward + backward;
  medians over ``--rounds`` rounds of ``--steps`` steps, summed over the units.

The bound per setting is the sum over units of (at-work share x the shrink's cost a step), in
per cent of the summed step as it runs.

    .venv/bin/python benchmarks/border_shrink.py [--model resnet20] [--settings W4A4 W2A2]
        [--iters N] [--rounds 8] [--steps 30]

Writes ``benchmarks/results/border_shrink_<model>.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from accuracy import calibrate_args
from result_json import script_command, write_result
from speed import add_bare_loop_options, bare_units, per_iter

from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.reconstruction import BlockReconstruction
from attnround_pl.calib.report import Report
from attnround_pl.calib.step import optimizer_step
from attnround_pl.cli import main as cli_main
from attnround_pl.quant import act_border

BATCH = 64
CPU = torch.device("cpu")


@contextmanager
def shrink_forced() -> Iterator[None]:
    """The shrink's operations computed on every quantizer-step, idle or not."""
    original = act_border._shrink_is_idle
    act_border._shrink_is_idle = lambda x, bound: False
    try:
        yield
    finally:
        act_border._shrink_is_idle = original


class ShrinkCount:
    """Per unit: the border quantizer-steps of its reconstruction (``calls``) and those where
    the shrink was at work (``at_work``), its steps (``steps``) and the first step with the
    shrink at work on some quantizer (``first_at_work``); ``window_calls``/``window_at_work``
    count the first ``window`` steps only (``speed.py``'s fit is 200 steps a unit by
    default). Quantizer calls outside
    ``BlockReconstruction.reconstruction_step`` (the unit's error checks, the evaluation) are
    not counted."""

    def __init__(self, window: int = 200) -> None:
        self.window = window
        self.window_calls: Counter[str] = Counter()  # the same in the first ``window`` steps
        self.window_at_work: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.at_work: Counter[str] = Counter()
        self.steps: Counter[str] = Counter()
        self.first_at_work: dict[str, int] = {}  # per unit, its first step at work (1-based)
        self._unit: str | None = None

    @contextmanager
    def counting(self) -> Iterator[None]:
        is_idle = act_border._shrink_is_idle
        step = BlockReconstruction.reconstruction_step

        def counted_idle(x: torch.Tensor, bound: torch.Tensor) -> bool:
            idle = is_idle(x, bound)
            if self._unit is not None:
                self.calls[self._unit] += 1
                self.at_work[self._unit] += not idle
                if not idle:
                    self.first_at_work.setdefault(self._unit, self.steps[self._unit])
                if self.steps[self._unit] <= self.window:
                    self.window_calls[self._unit] += 1
                    self.window_at_work[self._unit] += not idle
            return idle

        def counted_step(module: BlockReconstruction, *args, **kwargs):
            self._unit = module.name
            self.steps[module.name] += 1
            try:
                return step(module, *args, **kwargs)
            finally:
                self._unit = None

        act_border._shrink_is_idle = counted_idle
        BlockReconstruction.reconstruction_step = counted_step
        try:
            yield
        finally:
            act_border._shrink_is_idle = is_idle
            BlockReconstruction.reconstruction_step = step

    def shares(self) -> dict[str, float]:
        """Per unit, the share of its quantizer-steps with the shrink at work."""
        return {u: self.at_work[u] / n for u, n in self.calls.items() if n}


def count_at_work(model: str, setting: str, seed: int = 0,
                  iters: int | None = None) -> tuple[ShrinkCount, Report]:
    """One calibration of the default recipe (``setting``, ``seed``; ``iters`` steps a unit,
    None: the recipe's) with ``ShrinkCount``; returns the count and the run's report."""
    count = ShrinkCount()
    with tempfile.TemporaryDirectory() as out, count.counting():
        args = ["calibrate", *calibrate_args(model, setting, "attnround", seed),
                "--run.out_dir", out, "--run.name", "run", "--run.progress", "false",
                "--run.eval_float", "false", "--run.eval_nearest", "false",
                "--run.host_speed", "false",
                *([] if iters is None else ["--recon.iters", str(iters)])]
        if cli_main(args) != 0:
            raise SystemExit(f"the calibration of {model} {setting} failed")
        report = Report.read(Path(out) / "run" / "report.json")
    return count, report


def time_unit(step: Callable[[], None], floating: Callable[[], None], rounds: int,
              steps: int) -> dict[str, float]:
    """Medians over ``rounds`` (ms): the bare-loop step as it runs, with the shrink forced,
    and the float unit's step, in turn within each round (as-run and forced alternate first)."""
    times: dict[str, list[float]] = {"step_ms": [], "forced_ms": [], "float_ms": []}

    def forced() -> None:
        with shrink_forced():
            step()

    arms = [("step_ms", step), ("forced_ms", forced)]
    for round_ in range(rounds):
        for key, fn in (arms if round_ % 2 == 0 else arms[::-1]):
            times[key].append(per_iter(fn, steps, CPU) * 1e3)
        times["float_ms"].append(per_iter(floating, steps, CPU) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def measure_cost(model: str, rounds: int, steps: int, max_units: int | None = None,
                 images: str = "fmnist") -> list[dict]:
    """Per unit of the default recipe: ``time_unit``'s medians and ``shrink_ms``, what the
    shrink's operations add to a step when they run on every quantizer. ``images``:
    Fashion-MNIST calibration images and the committed weights, or random images and random
    weights (the tests; the time does not depend on the values)."""
    rows = []
    for u in bare_units(model, images, steps, BATCH, max_units):
        row = {"unit": u.spec.name,
               **time_unit(partial(optimizer_step, u.losses, u.opt, u.x, u.y), u.float_call(),
                           rounds, steps)}
        row["shrink_ms"] = row["forced_ms"] - row["step_ms"]
        rows.append(row)
        print(f"| {row['unit']} | {row['step_ms']:.2f} | {row['forced_ms']:.2f} | "
              f"{row['shrink_ms']:+.2f} | {row['float_ms']:.2f} |", flush=True)
    return rows


def upper_bound(rows: list[dict], shares: dict[str, float]) -> dict[str, float]:
    """What a whole-unit shrink could at most take off the summed step as it runs: each unit's
    shrink cost a step (``shrink_ms``, at least 0) times its at-work share (``shares``; a
    unit without border quantizers has none)."""
    step = sum(r["step_ms"] for r in rows)
    saved = sum(max(r["shrink_ms"], 0.0) * shares.get(r["unit"], 0.0) for r in rows)
    return {"saved_ms": saved, "percent_of_step": 100 * saved / step}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bare_loop_options(parser, "steps a timing of the step",
                          images_help="random: random images and weights for the timing (as "
                          "speed.py --images random)")
    parser.add_argument("--settings", nargs="+", default=["W4A4", "W2A2"],
                        help="the calibrations that count the at-work share (W4A4, W3A3, ...)")
    parser.add_argument("--iters", type=int, default=None,
                        help="steps a unit in the counting calibrations (default: the recipe's)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.iters or 1) < 1:
        parser.error("--rounds, --steps and --iters: at least 1")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    counted = {}
    for setting in args.settings:
        count, report = count_at_work(args.model, setting, iters=args.iters)
        top1 = None if report.quantized is None else report.quantized.top1
        counted[setting] = {"top1": top1, "calib_seconds": report.calib_seconds,
                            "steps": dict(count.steps), "calls": dict(count.calls),
                            "at_work": dict(count.at_work),
                            "first_at_work": count.first_at_work,
                            "window": count.window, "window_calls": dict(count.window_calls),
                            "window_at_work": dict(count.window_at_work),
                            "shares": count.shares()}
        print(f"{args.model} {setting}: the shrink at work in {sum(count.at_work.values())} "
              f"of {sum(count.calls.values())} quantizer-steps "
              f"({sum(count.window_at_work.values())} of {sum(count.window_calls.values())} in "
              f"the first {count.window} steps of each unit); top-1 {top1}", flush=True)
    torch.manual_seed(0)
    print("| unit | step as run ms | shrink on every quantizer ms | difference | "
          "float fwd+bwd ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = measure_cost(args.model, args.rounds, args.steps, args.max_units, args.images)
    total = {k: sum(r[k] for r in rows) for k in ("step_ms", "forced_ms", "shrink_ms",
                                                  "float_ms")}
    print(f"| all units | {total['step_ms']:.2f} | {total['forced_ms']:.2f} | "
          f"{total['shrink_ms']:+.2f} | {total['float_ms']:.2f} |")
    bounds = {s: upper_bound(rows, c["shares"]) for s, c in counted.items()}
    for setting, bound in bounds.items():
        print(f"{setting}: a whole-unit shrink could take at most {bound['saved_ms']:.3f} ms "
              f"({bound['percent_of_step']:.2f} %) off the summed step")
    result = {"model": args.model, "images": args.images, "batch": BATCH, "iters": args.iters,
              "rounds": args.rounds, "steps": args.steps, "counted": counted,
              "units": rows, "total": total, "upper_bound": bounds, "machine": machine(),
              "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
              "command": script_command("border_shrink.py", argv)}
    write_result(args.out / f"border_shrink_{args.model}.json", result)


if __name__ == "__main__":
    main()
