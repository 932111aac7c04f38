"""Levers of issue 34 measured without reconstruction, on the validation split.

Each lever changes the quantized model before any learning (where activations are quantized,
the error exponent of the scale and step searches), so the ``nearest`` recipe (round-to-nearest
weights, activation steps at their search's result) shows its effect alone, in a minute a run.
Every run evaluates on ``--data.init_args.holdout 5000``: 5,000 training images that are not
calibration images (the validation split), never the test set. Prints a markdown table (top-1
mean ± standard deviation over the seeds) and writes ``benchmarks/results/levers_<recipe>.json``
(after each finished row, so a stopped command keeps them);
runs go to ``benchmarks/runs/levers/`` (a finished one is reused). ``--recipe attention`` runs
the same with reconstruction (minutes a run).

    .venv/bin/python benchmarks/levers.py                       # W2A4, both models, 3 seeds
    .venv/bin/python benchmarks/levers.py --models resnet20 --settings W2A4 W4A4 --seeds 0 1
    .venv/bin/python benchmarks/levers.py --models resnet20 --recipe attention --variants 0 1
    .venv/bin/python benchmarks/levers.py --recipe attention --table   # every row so far
    .venv/bin/python benchmarks/levers.py --models resnet20 --compare attention:1 attnround:4
    .venv/bin/python benchmarks/levers.py --compare attnround:0 attnround:51 --paired
    .venv/bin/python benchmarks/levers.py --recipe attnround --variants 0 41 --sitting epyc
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from paired import evaluate, paired_change  # a sibling script (benchmarks/)
from result_json import commands_with, read_earlier, read_result, script_command, write_result

from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.report import Report

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs" / "levers"
RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-m", "attnround_pl.cli"]
SETTINGS = {"W4A4": "configs/precision/w4a4.yaml", "W2A4": "configs/precision/w2a4.yaml",
            "W3A3": "configs/precision/w3a3.yaml", "W2A2": "configs/precision/w2a2.yaml"}
# the peers' placement (block inputs and outputs quantized) and order (a block's input quantizer
# learned with the unit before it), what the like-for-like rows run
PEERS_ORDER = ["--quant.act_placement", "blocks", "--recon.block_output_steps", "true"]
VARIANTS = {  # name -> options on top of the model, recipe and precision files
    "the recipe as it is": [],
    "scale_search_p 2.4": ["--quant.scale_search_p", "2.4"],
    "act_placement blocks": ["--quant.act_placement", "blocks"],
    # with reconstruction (--recipe attention); new variants go at the end (runs are named by
    # position)
    "alpha init zero": ["--quant.rounding_args", "{tau: 0.5, init: zero}"],
    "alpha lr 1e-3": ["--recon.lr", "0.001"],
    "drop 0.5, float inputs": ["--quant.drop.prob", "0.5", "--quant.drop.float_inputs", "true"],
    "lr_schedule cosine": ["--recon.lr_schedule", "cosine"],
    "iters 5000": ["--recon.iters", "5000"],
    "iters 5000, alpha lr 1e-3": ["--recon.iters", "5000", "--recon.lr", "0.001"],
    "tau_end 0.1": ["--quant.rounding_args", "{tau: 0.5, tau_end: 0.1}"],
    # mixed precision at the size of the setting's uniform weight bits (run with W4A4)
    "mixed [3,4,5,6] by coding length, W4 size": ["--mixed.bit_list", "[3,4,5,6]",
                                                  "--mixed.budget_bits", "4"],
    "mixed [3,4,5,6] by sensitivity, W4 size": ["--mixed.bit_list", "[3,4,5,6]",
                                                "--mixed.budget_bits", "4",
                                                "--mixed.method", "sensitivity"],
    "keep best every 250": ["--recon.keep_best_every", "250"],
    "act_border aquant": ["--quant.act_border", "aquant"],
    # mixed precision at the size of uniform W3 (run with W3A3)
    "mixed [2,3,4] by coding length, W3 size": ["--mixed.bit_list", "[2,3,4]",
                                                "--mixed.budget_bits", "3"],
    "mixed [2,3,4] by sensitivity, W3 size": ["--mixed.bit_list", "[2,3,4]",
                                              "--mixed.budget_bits", "3",
                                              "--mixed.method", "sensitivity"],
    # twice the calibration images (the holdout still leaves them all out)
    "calib 2048 images": ["--data.init_args.calib_size", "2048"],
    "calib 2048 images, alpha lr 1e-3": ["--data.init_args.calib_size", "2048",
                                         "--recon.lr", "0.001"],
    "alpha lr 2e-3": ["--recon.lr", "0.002"],
    # the activation steps' learning rate (4e-4 in every recipe; QDrop's code uses 4e-5)
    "act lr 1e-3": ["--recon.act_lr", "0.001"],
    # twice the images per step (2x the step's work; the goal allows 4x our time)
    "batch 128": ["--recon.batch_size", "128"],
    # BRECQ's Fisher-weighted output error (recon.loss): the paper's g^2, their code's damped
    "loss fisher": ["--recon.loss", "fisher"],
    "loss fisher_damped": ["--recon.loss", "fisher_damped"],
    # the peers' placement (a low-bit residual stream) with the levers that might pay there
    "act_placement blocks, drop 0.5, float inputs": ["--quant.act_placement", "blocks",
                                                     "--quant.drop.prob", "0.5",
                                                     "--quant.drop.float_inputs", "true"],
    "act_placement blocks, act_border aquant": ["--quant.act_placement", "blocks",
                                                "--quant.act_border", "aquant"],
    # BRECQ's and QDrop's order: a block's input quantizer learned with the unit before it
    "act_placement blocks, block output steps": [*PEERS_ORDER],
    # AQuant's border (ahead at layers on MobileNetV2 W2A2) in the peers' placement and order
    "act_placement blocks, block output steps, act_border aquant": [
        *PEERS_ORDER, "--quant.act_border", "aquant"],
    # two consecutive blocks a unit (recon.unit_blocks), at each placement
    "unit_blocks 2": ["--recon.unit_blocks", "2"],
    "act_placement blocks, block output steps, unit_blocks 2": [
        *PEERS_ORDER, "--recon.unit_blocks", "2"],
    # two blocks a unit at the total of steps of one (a joined unit gets twice the steps)
    "unit_blocks 2, iters 4000": ["--recon.unit_blocks", "2", "--recon.iters", "4000"],
    "unit_blocks 3": ["--recon.unit_blocks", "3"],
    # the stem and the head joined to the block next to them (recon.join_end_layers)
    "join_end_layers": ["--recon.join_end_layers", "true"],
    "unit_blocks 2, join_end_layers": ["--recon.unit_blocks", "2",
                                       "--recon.join_end_layers", "true"],
    # two blocks a unit, no unit across a stage's end (recon.unit_blocks_in_stage)
    "unit_blocks 2 in stage": ["--recon.unit_blocks", "2", "--recon.unit_blocks_in_stage",
                               "true"],
    "unit_blocks 2 in stage, join_end_layers": [
        "--recon.unit_blocks", "2", "--recon.unit_blocks_in_stage", "true",
        "--recon.join_end_layers", "true"],
    # the peers' placement and order (the goal's rows) with 2.5x the steps: within a quarter
    # of QDrop's recipe's time at ResNet-20 W2A4, the goal's last miss
    "act_placement blocks, block output steps, iters 5000": [
        *PEERS_ORDER, "--recon.iters", "5000"],
    # on the default in the peers' placement and order at ResNet-20 W2A4 (the goal's last
    # miss): what QDrop's recipe has there and ours has not (one block a unit, its dropping with
    # the float network's inputs), and what paid on older recipes at that setting (alpha started
    # at 0, alpha's learning rate 2e-3)
    "act_placement blocks, block output steps, unit_blocks 1": [
        *PEERS_ORDER, "--recon.unit_blocks", "1"],
    "act_placement blocks, block output steps, drop 0.5, float inputs": [
        *PEERS_ORDER, "--quant.drop.prob", "0.5", "--quant.drop.float_inputs", "true"],
    "act_placement blocks, block output steps, alpha init zero": [
        *PEERS_ORDER, "--quant.rounding_args", "{tau: 0.5, init: zero}"],
    "act_placement blocks, block output steps, alpha lr 2e-3": [
        *PEERS_ORDER, "--recon.lr", "0.002"],
    # QDrop's schedule for the activation steps in that placement: decayed to 0 along a cosine
    "act_placement blocks, block output steps, lr_schedule cosine_act": [
        *PEERS_ORDER, "--recon.lr_schedule", "cosine_act"],
    # the adaptive budget (recon.plateau_gain): a unit stops when a window's loss fell by less
    # than 1 % (3 %), the units after it may use the steps it left
    "plateau gain 0.01": ["--recon.plateau_gain", "0.01"],
    "act_placement blocks, block output steps, plateau gain 0.01": [
        *PEERS_ORDER, "--recon.plateau_gain", "0.01"],
    "act_placement blocks, block output steps, plateau gain 0.03": [
        *PEERS_ORDER, "--recon.plateau_gain", "0.03"],
    "plateau gain 0.03": ["--recon.plateau_gain", "0.03"],
    # the control: a fixed budget of the steps gain 0.03 took at ResNet-20 W2A4 in that
    # placement (7,750 over 5 units on each of 3 seeds)
    "act_placement blocks, block output steps, iters 1550": [
        *PEERS_ORDER, "--recon.iters", "1550"],
    # the hybrid with AdaRound's relaxation (quant.rounding_args.relax): learn on a soft
    # rounding of x + alpha, hardening from 2 to 40 over a unit's steps
    "act_placement blocks, block output steps, relax 2": [
        *PEERS_ORDER, "--quant.rounding_args", "{tau: 0.5, relax: 2.0}"],
    "relax 2": ["--quant.rounding_args", "{tau: 0.5, relax: 2.0}"],
    # ... from 8 to 40: less of the run on a value far from the hard one
    "act_placement blocks, block output steps, relax 8": [
        *PEERS_ORDER, "--quant.rounding_args", "{tau: 0.5, relax: 8.0}"],
    "relax 8": ["--quant.rounding_args", "{tau: 0.5, relax: 8.0}"],
    # ... hardening to 200 instead of 40: a smaller step from the soft value learned on to the
    # hard one frozen (at 40 a weight 0.05 grid steps from a midpoint is 0.018 steps off)
    "relax 8, relax_end 200": ["--quant.rounding_args",
                               "{tau: 0.5, relax: 8.0, relax_end: 200.0}"],
    # ... soft for the first half of a unit's steps (8 -> 40 there), then the hard value with
    # the straight-through gradient to the end (quant.rounding_args.relax_until)
    "relax 8 until 0.5": ["--quant.rounding_args",
                          "{tau: 0.5, relax: 8.0, relax_until: 0.5}"],
    "act_placement blocks, block output steps, relax 8 until 0.5": [
        *PEERS_ORDER, "--quant.rounding_args", "{tau: 0.5, relax: 8.0, relax_until: 0.5}"],
    # ... soft for the first quarter only (at 0.5 MobileNetV2 W3A3 and W2A2 were behind)
    "relax 8 until 0.25": ["--quant.rounding_args",
                           "{tau: 0.5, relax: 8.0, relax_until: 0.25}"],
    # PD-Quant's term on the network's output (recon.output_weight) at their code's weight and
    # temperature (10, 4), in the peers' placement and order: the goal's last miss
    "act_placement blocks, block output steps, output term 10": [
        *PEERS_ORDER, "--recon.output_weight", "10"],
    # ... ten times that weight
    "act_placement blocks, block output steps, output term 100": [
        *PEERS_ORDER, "--recon.output_weight", "100"],
    "act_placement blocks, block output steps, output term 1000": [
        *PEERS_ORDER, "--recon.output_weight", "1000"],
    # ... weight 100 in the default placement
    "output term 100": ["--recon.output_weight", "100"],
}
HOLDOUT = 5000


def run(model: str, setting: str, variant: str, seed: int, recipe: str = "nearest") -> Report:
    folder = run_dir(model, setting, list(VARIANTS).index(variant), seed, recipe)
    name = folder.name
    if not (folder / "report.json").is_file():
        files = [f"configs/models/{model}.yaml", f"configs/recipes/{recipe}.yaml",
                 SETTINGS[setting]]
        subprocess.run([*CLI, "calibrate", *[a for f in files for a in ("--config", f)],
                        *VARIANTS[variant], "--seed_everything", str(seed),
                        "--data.init_args.holdout", str(HOLDOUT),
                        "--run.out_dir", str(RUNS), "--run.name", name, "--run.progress", "false",
                        "--run.eval_nearest", "false", "--run.overwrite", "true"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return Report.read(folder / "report.json")


def run_dir(model: str, setting: str, variant: int, seed: int, recipe: str) -> Path:
    prefix = "" if recipe == "nearest" else f"{recipe}_"
    return RUNS / f"{prefix}{model}_{setting}_{variant}_s{seed}"


def compare(model: str, setting: str, seeds: list[int], before: str, after: str,
            paired: bool = False) -> None:
    """Print, per seed, top-1 and per unit the change of the output's SQNR on the validation
    images (dB, after - before) and the ratio of the MSE on the calibration images (after /
    before) between two finished variants, each named ``recipe:variant-number``; ``paired``:
    also the images each gets right alone and the top-1 change's paired standard error."""
    def folder(spec: str, seed: int) -> Path:
        recipe, variant = spec.split(":")
        path = run_dir(model, setting, int(variant), seed, recipe)
        if not (path / "report.json").is_file():
            raise SystemExit(f"levers.py --compare: {spec} has no finished run for {model} "
                             f"{setting} seed {seed} (no {path}/report.json): run it first")
        return path

    def read(spec: str, seed: int) -> Report:
        return Report.read(folder(spec, seed) / "report.json")

    images: dict[str, tuple[list, str]] = {}  # each seed's validation images, built once
    for seed in seeds:
        a, b = read(before, seed), read(after, seed)
        sqnr = {u.name: u.fidelity.sqnr_db for u in a.unit_fidelity}
        mse = {u.name: u.mse_final for u in a.units}
        print(f"{model} {setting} seed {seed}: top-1 {a.quantized.top1:.2f} -> "
              f"{b.quantized.top1:.2f}")
        # units of another size (recon.unit_blocks) have no counterpart: '?'
        print("  validation SQNR change, dB: " + " ".join(
            f"{u.fidelity.sqnr_db - sqnr[u.name]:+.2f}" if u.name in sqnr else "?"
            for u in b.unit_fidelity))
        print("  calibration MSE ratio:      " + " ".join(
            f"{u.mse_final / mse[u.name]:.2f}" if u.name in mse else "?" for u in b.units))
        if paired:
            change = paired_change(evaluate(folder(before, seed), images).right,
                                   evaluate(folder(after, seed), images).right)
            print(f"  validation images right only before: {change.only_before}, only after: "
                  f"{change.only_after}; top-1 change {change.change:+.2f} pp, paired standard "
                  f"error {change.se:.2f} pp")


def results_name(recipe: str, sitting: str | None = None) -> str:
    """The results file of ``recipe``'s levers (of one ``sitting``, where named)."""
    return f"levers_{recipe}.json" if sitting is None else f"levers_{recipe}_{sitting}.json"


def write_results(out: Path, recipe: str, rows: list[dict], command: str) -> None:
    """Write ``rows`` to ``out``, keeping the rows of earlier commands (other models, settings
    or variants) that this one did not run; ``commands`` lists every command that wrote rows."""
    old = read_earlier(out)
    ran = {(r["model"], r["setting"], r["variant"]) for r in rows}
    kept = [r for r in old.get("rows", []) if (r["model"], r["setting"], r["variant"]) not in ran]
    write_result(out, {"commands": commands_with(old, command), "machine": machine(),
                       "recipe": recipe, "holdout": HOLDOUT, "rows": [*kept, *rows]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--settings", nargs="+", default=["W2A4"], choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--recipe", default="nearest",
                        help="a file of configs/recipes/ (default: nearest, no reconstruction)")
    parser.add_argument("--variants", nargs="+", type=int, default=list(range(len(VARIANTS))),
                        help="which variants, by position: " + ", ".join(
                            f"{i} {v}" for i, v in enumerate(VARIANTS)))
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="per-unit fidelity of two finished variants, each "
                             "recipe:variant-number (e.g. attention:1 attnround:4); run nothing")
    parser.add_argument("--paired", action="store_true",
                        help="with --compare: also reload both quantized models and print the "
                             "validation images each gets right alone and the top-1 change's "
                             "paired standard error")
    parser.add_argument("--sitting", metavar="TAG",
                        help="write levers_<recipe>_<TAG>.json instead of levers_<recipe>.json: "
                             "a base row and its levers from another host or day, kept apart "
                             "from the rows they are not comparable with")
    parser.add_argument("--table", action="store_true",
                        help="print every row of levers_<recipe>.json as a table; run nothing")
    args = parser.parse_args()
    if args.paired and not args.compare:
        parser.error("--paired counts the images two finished variants differ on: give them "
                     "with --compare BEFORE AFTER")
    if args.compare:
        for model in args.models:
            for setting in args.settings:
                compare(model, setting, args.seeds, *args.compare, paired=args.paired)
        return
    if args.table:
        print_table(read_result(RESULTS / results_name(args.recipe, args.sitting))["rows"])
        return
    variants = [list(VARIANTS)[i] for i in args.variants]
    rows = []
    command = script_command("levers.py", None)
    read_earlier(RESULTS / results_name(args.recipe, args.sitting))  # broken: stop before a run
    for model in args.models:
        for setting in args.settings:
            for variant in variants:
                reports = [run(model, setting, variant, seed, args.recipe) for seed in args.seeds]
                top1 = [r.quantized.top1 for r in reports]
                rows.append({"model": model, "setting": setting, "variant": variant,
                             "seeds": args.seeds, "top1": top1,
                             "float_top1": reports[0].float_model.top1,
                             "eval_data": reports[0].eval_data,
                             "calib_seconds": [r.calib_seconds for r in reports],
                             # the same in the host's reference iterations (host_speed), which
                             # compare across hosts
                             "calib_reference_iters": [r.calib_reference_iters
                                                       for r in reports],
                             # every unit's steps together (recon.plateau_gain changes them)
                             "steps": [sum(u.iters for u in r.units) for r in reports]})
                print(f"# {model} {setting} {variant}: {top1}", file=sys.stderr, flush=True)
                # after every row: a command stopped later keeps the rows it finished
                write_results(RESULTS / results_name(args.recipe, args.sitting), args.recipe,
                              rows, command)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("| model | setting | variant | validation top-1 % (mean ± sd) | per seed | float | "
          "calibration s (mean) | reference iterations (mean) | steps, all units (mean) |")
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        sd = statistics.stdev(r["top1"]) if len(r["top1"]) > 1 else 0.0
        print(f"| {r['model']} | {r['setting']} | {r['variant']} | "
              f"{statistics.mean(r['top1']):.2f} ± {sd:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in r['top1'])} | {r['float_top1']:.2f} | "
              f"{statistics.mean(r['calib_seconds']):.0f} | "
              f"{_mean_or_dash(r, 'calib_reference_iters')} | {_mean_or_dash(r, 'steps')} |")


def _mean_or_dash(row: dict, key: str) -> str:
    """Rows written before the host speed index have no reference iterations, rows written
    before the adaptive budget no steps."""
    values = [i for i in row.get(key, []) if i is not None]
    return f"{statistics.mean(values):,.0f}" if values else "-"


if __name__ == "__main__":
    main()
