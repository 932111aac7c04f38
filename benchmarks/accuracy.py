"""Accuracy benchmark: calibrate the embedded models at several bit widths and methods.

Every row is one ``attnround-pl calibrate`` run in its own process (so peak RSS is the row's
own), in ``benchmarks/runs/<row>/``; a row whose run folder already holds a report is read, not
re-run, so an interrupted benchmark continues where it stopped. Prints a markdown table and
writes ``benchmarks/results/accuracy_<suite>.json`` (``benchmarks/plots.py`` draws it). The
JSON keeps every seed's numbers (``per_seed``), and a suite's rows already in it are reused
seed by seed, so a fresh clone (without ``benchmarks/runs``) adds rows or seeds to a committed
table without re-running it; delete the JSON to start a suite over. With ``--reuse-suites`` a
suite also takes the seeds it lacks from the other suites' JSON (the same row is the same
command in every suite), as the tau suite's MobileNetV2 tau = 0.5 rows were.

    .venv/bin/python benchmarks/accuracy.py --quick          # resnet20, one seed, ~25 min
    .venv/bin/python benchmarks/accuracy.py --suite main     # docs/benchmarks.md's table (~3.5 h)
    .venv/bin/python benchmarks/accuracy.py --full           # everything below, 3 seeds
    .venv/bin/python benchmarks/accuracy.py --suite aquant   # one named suite
    .venv/bin/python benchmarks/accuracy.py --suite recipes  # default recipe vs paper (~1 h)
    .venv/bin/python benchmarks/accuracy.py --suite tau --reuse-suites  # tau = 0.5 from the others

A row runs what a user runs: ``attnround-pl calibrate --config configs/models/<model>.yaml
--config configs/recipes/<recipe>.yaml`` plus the setting's bits and the method's options
(``calibrate_args``). Methods (all on the same calibration set, evaluation and first/last 8-bit
layers), with their recipe:
    nearest, floor, ceil, stochastic   nearest.yaml (+ --quant.rounding): the rounding function
                                       alone (no reconstruction; the activation steps keep
                                       their MSE initialisation)
    adaround                           adaround.yaml: AdaRound at our settings (2k iterations,
                                       batch 64, 4e-4)
    adaround_20k                       AdaRound with BRECQ's budget (20k, batch 32) at our lr 4e-4
    brecq                              brecq.yaml, BRECQ's recipe: AdaRound, 20k iterations,
                                       batch 32, lr 1e-3, regulariser 0.01, beta 20 -> 2 after
                                       20 % warm-up, activation steps at lr 4e-4 on a cosine,
                                       block inputs and outputs quantized, ranges by Lp, p 2.4;
                                       the steps learned in a second pass (5k iterations) from
                                       the float network's block inputs
    qdrop                              qdrop.yaml, QDrop's recipe: BRECQ's, activation steps at
                                       lr 4e-5 on a cosine, activations dropped to float with
                                       probability 0.5, block inputs mixed with the float model's
    brecq_v1, qdrop_v1                 the same recipes as the tables before issue 34 ran them:
                                       layer inputs quantized, MSE ranges, constant rates, QDrop
                                       mixing with the quantized model's own float values
    brecq_v2                           BRECQ's recipe as the like-for-like rows ran it until
                                       2026-12-06: its second pass (the steps alone) learning
                                       on the quantized network's unit inputs, not the float
                                       network's as their code
    attention                          attention.yaml, Attention Round, the paper's settings
                                       (tau 0.5, 2k, 64, 4e-4); the rows below are it plus options
    attention_blocks                   the same with the peers' activation placement (block
                                       inputs and outputs quantized: --quant.act_placement blocks,
                                       each block's output step learned with it: --recon.
                                       block_output_steps true)
    attnround, attnround_blocks        attnround.yaml, this package's recipe (issue 34), and with
                                       the peers' placement
    attnround_v2                       the same recipe as it was until 2026-12-04: activations
                                       rounded to nearest (--quant.act_border nearest)
    attnround_v1, attnround_v1_blocks  ... and as it was until 2026-12-03: besides, one block a
                                       unit, the stem and the head units of their own
                                       (--recon.unit_blocks 1 --recon.join_end_layers false)
    attention_20k                      the same with BRECQ's budget: 20k iterations, batch 32
    attention_20k_lr1e-3               ... and BRECQ's learning rate 1e-3 for the offsets
    attention_cosine                   Attention Round with both learning rates decayed to 0
                                       along a half cosine (``recon.lr_schedule cosine``)
    attention_tau<t>                   the tau sweep (figure 2 of the paper):
                                       --quant.rounding_args.tau <t>
    attention+aquant                   Attention Round with AQuant's learned activation border
    adaround+drop, attention+drop      our 2k settings with QDrop's dropping (probability 0.5,
                                       --quant.drop.prob 0.5)
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from markdown_table import HEADER, row_line
from result_json import most_seeded_rows, read_result

from attnround_pl.calib.report import Report, ReportError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ROOT / "benchmarks" / "runs"  # where the rows' calibrations run
DEFAULT_OUT = ROOT / "benchmarks" / "results"  # where the suites' JSON go
CLI = [sys.executable, "-m", "attnround_pl.cli"]
CONFIGS = ROOT / "configs"

BITS = {"W4A32": (4, 32), "W3A32": (3, 32), "W4A4": (4, 4), "W3A3": (3, 3), "W2A4": (2, 4),
        "W2A2": (2, 2), "W3A4": (3, 4), "W5A4": (5, 4)}
# mixed weight bits, A4; "<name>@W4": the allocation no larger than uniform W4 (budget_bits)
MIXED = {"MP3456": "[3,4,5,6]", "MP345": "[3,4,5]"}


def setting_args(setting: str) -> list[str]:
    mixed, _, budget_bits = setting.partition("@W")
    if mixed in MIXED:
        budget = ["--mixed.budget_bits", budget_bits] if budget_bits else []
        return ["--quant.a_bits", "4", "--mixed.bit_list", MIXED[mixed], *budget]
    w_bits, a_bits = BITS[setting]
    return ["--quant.w_bits", str(w_bits), "--quant.a_bits", str(a_bits)]


class Method(NamedTuple):
    """A table row's method: a recipe (``configs/recipes/<recipe>.yaml``) and calibrate options
    on top of it."""

    recipe: str
    args: tuple[str, ...] = ()


BUDGET_20K = ("--recon.iters", "20000", "--recon.batch_size", "32")  # BRECQ's and QDrop's
DROP = ("--quant.drop.prob", "0.5")  # QDrop's dropping, its probability
# BRECQ's and QDrop's activation placement, each block's output quantizer learned with it
BLOCKS = ("--quant.act_placement", "blocks", "--recon.block_output_steps", "true")
PEERS_V1 = ("--quant.act_placement", "layers", "--recon.block_output_steps", "false",
            "--quant.scale_search_p", "2.0",
            "--recon.lr_schedule", "constant")  # the peers' recipe files before issue 34
# the unit shape of every recipe but attnround's since 2026-12-03
ONE_BLOCK = ("--recon.unit_blocks", "1", "--recon.join_end_layers", "false")
NEAREST_BORDER = ("--quant.act_border", "nearest")  # the default recipe's before 2026-12-04
TAUS = ("0", "0.25", "0.75", "1.0")
TAU_SWEEP = [f"attention_tau{t}" for t in TAUS]  # beside "attention", tau 0.5

# method name -> recipe and options on top of it (after the model file and the setting's bits)
METHODS = {
    "nearest": Method("nearest"),
    **{name: Method("nearest", ("--quant.rounding", name)) for name in ("floor", "ceil",
                                                                         "stochastic")},
    "adaround": Method("adaround"),
    # BRECQ's recipe but for the learning rate (ours, 4e-4; regulariser and beta are the same)
    "adaround_20k": Method("adaround", BUDGET_20K),
    # the peers' recipes as their published code runs them (configs/recipes/brecq.yaml,
    # qdrop.yaml; issue 34): activations quantized at block inputs and outputs, ranges by
    # the error to the power 2.4, the steps' learning rate on a cosine, QDrop's float inputs
    "brecq": Method("brecq"),
    "qdrop": Method("qdrop"),
    # ... and as the tables up to issue 34 ran them (v1): each layer's input quantized, the
    # MSE ranges, a constant learning rate, BRECQ in one pass (rounding and steps together),
    # QDrop dropping only inside the block
    "brecq_v1": Method("brecq", (*PEERS_V1, "--recon.act_stage_iters", "0",
                                 "--recon.act_stage_loss_p", "2.0",
                                 "--recon.act_stage_float_inputs", "false")),
    # ... and as the like-for-like rows ran it until 2026-12-06: the steps' pass on the unit
    # inputs of the network quantized so far, where their code takes the float network's
    "brecq_v2": Method("brecq", ("--recon.act_stage_float_inputs", "false")),
    "qdrop_v1": Method("qdrop", (*PEERS_V1, "--quant.drop.float_inputs", "false")),
    "attention": Method("attention"),
    # with the peers' activation placement, for the rows compared with their recipes
    "attention_blocks": Method("attention", BLOCKS),
    # this package's recipe (configs/recipes/attnround.yaml; issue 34), and with the placement
    "attnround": Method("attnround"),
    "attnround_blocks": Method("attnround", BLOCKS),
    # ... as it was until 2026-12-04 (activations rounded to nearest; its rows until then were
    # named attnround)
    "attnround_v2": Method("attnround", NEAREST_BORDER),
    # ... and until 2026-12-03 (besides, one block a unit, the ends units of their own)
    "attnround_v1": Method("attnround", (*ONE_BLOCK, *NEAREST_BORDER)),
    "attnround_v1_blocks": Method("attnround", (*ONE_BLOCK, *NEAREST_BORDER, *BLOCKS)),
    # Attention Round with BRECQ's budget (20k iterations, batch 32), its own learning rates
    "attention_20k": Method("attention", BUDGET_20K),
    # ... and with BRECQ's learning rate for the rounding variables too (1e-3; steps 4e-4)
    "attention_20k_lr1e-3": Method("attention", (*BUDGET_20K, "--recon.lr", "1e-3")),
    # both learning rates decayed to 0 along a half cosine (recon.lr_schedule; not the paper's)
    "attention_cosine": Method("attention", ("--recon.lr_schedule", "cosine")),
    **{f"attention_tau{t}": Method("attention", ("--quant.rounding_args.tau", t)) for t in TAUS},
    "attention+aquant": Method("attention", ("--quant.act_border", "aquant")),
    # QDrop's dropping alone, at our settings (2k iterations, batch 64, lr 4e-4)
    "adaround+drop": Method("adaround", DROP),
    "attention+drop": Method("attention", DROP),
}


# (method, model) -> a recipe file of per-model settings read after the method's recipe: the
# peers' code weighs the rounding regulariser by 0.1 on MobileNetV2 (0.01 on the ResNets); the
# v1 rows ran 0.01 on both models and stay as recorded
MODEL_RECIPES = {("brecq", "mobilenetv2"): "peers/mobilenetv2",
                 ("qdrop", "mobilenetv2"): "peers/mobilenetv2"}


def calibrate_args(model: str, setting: str, method: str, seed: int) -> list[str]:
    """The ``attnround-pl calibrate`` arguments of a row (without the run folder's): the model
    file, the method's recipe (and its per-model file, ``MODEL_RECIPES``), the setting's bits,
    the seed and the method's options."""
    recipe, extra = METHODS[method]
    recipes = [r for r in (recipe, MODEL_RECIPES.get((method, model))) if r is not None]
    return ["--config", str(CONFIGS / "models" / f"{model}.yaml"),
            *[a for r in recipes for a in ("--config", str(CONFIGS / "recipes" / f"{r}.yaml"))],
            *setting_args(setting), "--seed_everything", str(seed), *extra]


BASELINES = ["nearest", "floor", "ceil", "stochastic", "adaround"]
PEERS = ["brecq_v1", "qdrop_v1"]  # the recorded tables' peer rows (v1, see METHODS)
SEEDS3 = (0, 1, 2)
RECON_TRIO = ("nearest", "adaround", "attention")  # no reconstruction, AdaRound, ours
DROPPED = ("adaround+drop", "attention+drop")
ALONE = ("floor", "ceil", "stochastic")  # the rounding functions alone, nearest apart


class Block(NamedTuple):
    """Settings x methods of a suite, run with ``seeds`` (``--seeds`` overrides; None: 0, or
    0 1 2 for ``--full``) on ``models`` (None: every model of the suite)."""

    settings: list[str]
    methods: list[str]
    seeds: tuple[int, ...] | None = None
    models: tuple[str, ...] | None = None


# suite -> (models, blocks)
SUITES = {
    "quick": (["resnet20"], [
        Block(["W4A4"], [*BASELINES, "attention"]),
        Block(["W3A3"], [*RECON_TRIO]),
        Block(["W2A4"], [*RECON_TRIO]),
    ]),
    # docs/benchmarks.md's main table (and README's headline): 3 seeds where the methods are
    # within 1 pp of each other, the peers' 20k-iteration recipes (10-30 min a run here)
    # included, at W2A4, W4A4, W3A3 and W2A2; Attention Round with their budget once, at its
    # own learning rate and BRECQ's
    "main": (["resnet20"], [
        Block(["W4A4"], [*BASELINES, "attention"], SEEDS3),
        Block(["W3A3"], [*RECON_TRIO], SEEDS3),
        Block(["W2A4", "W2A2"], [*RECON_TRIO, *DROPPED], SEEDS3),
        Block(["W3A3", "W2A4", "W2A2"], [*ALONE], SEEDS3),
        Block(["W2A4", "W4A4"], [*PEERS], SEEDS3),
        Block(["W2A4"], ["attention_20k", "attention_20k_lr1e-3"], (0,)),
        # does a decaying learning rate let the offsets settle? (the W2A4 gap to the peers)
        Block(["W2A4"], ["attention_cosine"], SEEDS3),
        Block(["W3A3"], [*PEERS], SEEDS3),
        Block(["W2A2"], [*PEERS], SEEDS3),
        # AdaRound with the 20k budget at our lr: rounding against rounding at equal budget
        Block(["W2A4", "W3A3", "W2A2"], ["adaround_20k"], (0,)),
        Block(["W3A3", "W2A2"], ["attention_20k"], (0,)),
    ]),
    "aquant": (["resnet20"], [
        Block(["W2A2", "W3A3", "W4A4", "W2A4"], ["attention", "attention+aquant"], SEEDS3),
    ]),
    "weights_only": (["resnet20"], [
        Block(["W4A32", "W3A32"], [*RECON_TRIO], SEEDS3),
        Block(["W4A32", "W3A32"], [*ALONE], SEEDS3),
        Block(["W4A32", "W3A32"], [*PEERS], SEEDS3),
    ]),
    # nearest, AdaRound and Attention Round with 3 seeds at all six settings, floor, ceil and
    # stochastic rounding alone there too; the peers' recipes (8-38 min a run) with 3 seeds at
    # all six; mixed precision as in the mixed suite; AQuant's border at W4A4, W3A3, W2A4 and
    # W2A2
    "mobilenetv2": (["mobilenetv2"], [
        Block(["W4A32", "W3A32", "W4A4"], [*RECON_TRIO], SEEDS3),
        Block(["W4A32", "W3A32", "W4A4", "W3A3", "W2A4", "W2A2"], [*ALONE], SEEDS3),
        Block(["W3A3"], [*RECON_TRIO, *PEERS], SEEDS3),
        Block(["W3A3"], ["attention_20k"], (0,)),
        Block(["W2A2"], [*PEERS], SEEDS3),
        Block(["W2A2"], ["attention_20k"], (0,)),
        # W2A2, where the peers lead by 4 pp: the budget, the lr and the rounding apart
        Block(["W2A2"], ["adaround_20k", "attention_20k_lr1e-3"], (0,)),
        Block(["W4A4"], [*PEERS], SEEDS3),
        Block(["W4A32", "W3A32"], [*PEERS], SEEDS3),  # weights only: 3 seeds
        Block(["W2A4", "W2A2"], [*RECON_TRIO], SEEDS3),
        Block(["W2A4"], [*PEERS], SEEDS3),
        Block(["W4A4", "W3A3", "W2A4", "W2A2"], ["attention+aquant"], SEEDS3),
        # the paper's table 4 on this model (W4A4 above; see the mixed suite)
        Block(["MP3456", "MP345", "MP3456@W4", "MP345@W4", "W3A4", "W5A4"], ["attention"],
              SEEDS3),
    ]),
    # the paper's figure 2: both models with quantized activations, and on MobileNetV2 (where
    # the weights alone lose 3.6 pp at 3 bits) with the weights alone
    "tau": (["resnet20", "mobilenetv2"], [
        Block(["W3A3"], ["attention", *TAU_SWEEP], SEEDS3),
        Block(["W3A32"], ["attention", *TAU_SWEEP], SEEDS3, ("mobilenetv2",)),
    ]),
    # the paper's table 4: the allocation as eq. 12 gives it (eps2 1e-3), and the largest one
    # no larger than uniform W4, against single precision
    "mixed": (["resnet20"], [
        Block(["MP3456", "MP345", "MP3456@W4", "MP345@W4", "W3A4", "W4A4", "W5A4"], ["attention"],
              SEEDS3),
    ]),
    # issue 34's like-for-like table: the peers' recipes as their code runs them, and ours
    # with their activation placement (block inputs and outputs quantized), on the test set;
    # the peers' rows are 20k iterations (hours on the 2-core CPU machine: 48 of them)
    "like_for_like": (["resnet20", "mobilenetv2"], [
        Block(["W2A4", "W2A2", "W3A3", "W4A4"], ["attention_blocks", "attnround_blocks",
                                                  "attnround_v1_blocks", "brecq", "qdrop"],
              SEEDS3),
        # BRECQ's recipe as these rows ran it until 2026-12-06 (v2, its second pass on the
        # quantized network's block inputs), where it ran: what their float inputs change
        Block(["W2A4", "W3A3"], ["brecq_v2"], SEEDS3, ("resnet20",)),
        Block(["W4A4"], ["brecq_v2"], (0,), ("resnet20",)),
        Block(["W2A2"], ["brecq_v2"], (0,), ("mobilenetv2",)),
    ]),
    # issue 34's final table on the test set: the default recipe (attnround) and the paper's
    # setting (attention) at the four settings of the goal, one sitting, same code and host;
    # the baselines in a later sitting
    "recipes": (["resnet20", "mobilenetv2"], [
        Block(["W4A4", "W3A3", "W2A4", "W2A2"], ["attnround", "attention", "attnround_v1"],
              SEEDS3),
        # the headline's baselines on the code of the fused quantizers (issue 31), where the
        # models' own suites hold rows from before it
        Block(["W4A4", "W3A3", "W2A4", "W2A2"], ["nearest", "adaround"], SEEDS3),
        # the default before AQuant's border joined it (2026-12-04)
        Block(["W4A4", "W3A3", "W2A4", "W2A2"], ["attnround_v2"], SEEDS3),
    ]),
    "full": (["resnet20", "mobilenetv2"], [
        Block(["W4A32", "W3A32", "W4A4", "W3A3", "W2A4", "W2A2"],
              [*BASELINES, *PEERS, "attention", *DROPPED, "attention+aquant", "adaround_20k",
               "attention_20k", "attention_20k_lr1e-3", "attention_cosine"]),
        Block(["W3A3", "W3A32"], TAU_SWEEP),
        Block(["MP3456", "MP345", "MP3456@W4", "MP345@W4", "W3A4", "W5A4"], ["attention"]),
    ]),
}


def run_row(model: str, setting: str, method: str, seed: int, runs: Path,
            existing_only: bool = False) -> Report | None:
    """One calibration (or its earlier report); returns the report (None: not run and
    ``existing_only``). A run that stopped (killed, or the session ended) is continued from
    its last finished unit (``--run.resume``); one that stopped before its first unit starts
    again."""
    name = f"{model}_{setting}_{method}_s{seed}".replace("+", "-")
    report = runs / name / "report.json"
    if not report.is_file() and existing_only:
        return None
    if not report.is_file():
        cmd = [*CLI, "calibrate", *calibrate_args(model, setting, method, seed),
               "--run.out_dir", str(runs), "--run.name", name, "--run.progress", "false",
               "--run.eval_float", "false", "--run.export", "[onnx]", *_continue(runs / name)]
        print(f"# {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"# {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    try:
        return Report.read(report)
    except ReportError as exc:
        raise SystemExit(f"{exc}; delete the run folder {report.parent} to calibrate it again"
                         ) from None


def _continue(folder: Path) -> list[str]:
    """``--run.resume`` for an unfinished run in ``folder`` with finished units (its
    ``progress.pt``); nothing otherwise (a folder without one is calibrated again)."""
    return ["--run.resume", str(folder)] if (folder / "progress.pt").is_file() else []


@functools.cache  # read once per model, not once per row
def float_top1(model: str) -> float:
    from attnround_pl.models import embedded_info

    return float(embedded_info(model)["float_top1"])


def ms_per_iteration(report: Report) -> float | None:
    """Milliseconds of one reconstruction iteration summed over the units that learned,
    everything of a unit included (cache, MSE checks, Trainer set-up); None: no
    reconstruction. ``benchmarks/speed.py`` gives the float forward + backward beside it."""
    learned = [u for u in report.units if u.learned and u.iters]
    if not learned:
        return None
    return 1e3 * sum(u.seconds / u.iters for u in learned)


# what a table row takes from one calibration's report (``ms_per_iter`` is computed)
RECORD_KEYS = ("quant_top1", "quant_top5", "nearest_top1", "calib_seconds", "peak_rss_mb",
               "size_mb", "onnx_top1", "onnx_argmax_mismatch", "machine")


def seed_record(report: Report) -> dict:
    """The numbers of one seed's calibration that its table row needs, kept in the row's
    ``per_seed`` so the JSON alone can be extended later (``benchmarks/runs`` is not committed).
    Its keys are ``RECORD_KEYS`` (the row JSON's), ``ms_per_iter``, ``calib_reference_iters``
    and ``cpu`` (the host's CPU and instruction set; None before reports recorded it: the same
    command on another CPU moves top-1 by about 0.1 pp)."""
    quantized, nearest, onnx = report.quantized, report.nearest, report.onnx
    return {
        "quant_top1": quantized.top1, "quant_top5": quantized.top5,
        "nearest_top1": nearest.top1 if nearest is not None else None,
        "calib_seconds": report.calib_seconds, "peak_rss_mb": report.peak_rss_mb,
        "size_mb": report.size_mb,
        "onnx_top1": onnx.top1 if onnx is not None else None,
        "onnx_argmax_mismatch": onnx.argmax_mismatch if onnx is not None else None,
        "machine": report.machine, "ms_per_iter": ms_per_iteration(report),
        "calib_reference_iters": report.calib_reference_iters, "cpu": report.cpu or None,
    }


def recorded_seeds(row: dict) -> dict[int, dict]:
    """The seed records a committed row holds: its ``per_seed``; for a one-seed row written
    before rows kept them, the row itself (its means are that seed's numbers); else none."""
    if "per_seed" in row:
        return {int(seed): record for seed, record in row["per_seed"].items()}
    if len(row["seeds"]) != 1:
        return {}
    renamed = {"quant_top1": "top1", "quant_top5": "top5"}
    record = {key: row[renamed.get(key, key)] for key in (*RECORD_KEYS, "ms_per_iter")}
    return {row["seeds"][0]: record}


def table_row(model: str, setting: str, method: str, float_top1: float,
              records: dict[int, dict]) -> dict:
    """One row of the table: means over the seeds' records (spread: population std of top-1)."""
    seeds = sorted(records)
    values = [records[s] for s in seeds]

    def mean(key: str) -> float:
        return statistics.mean(v[key] for v in values)

    top1 = [v["quant_top1"] for v in values]
    ms = [v["ms_per_iter"] for v in values]
    refs = [v.get("calib_reference_iters") for v in values]  # None: measured before the index
    return {
        "model": model, "setting": setting, "method": method, "seeds": seeds,
        "float_top1": float_top1, "top1": mean("quant_top1"),
        "top1_std": statistics.pstdev(top1) if len(top1) > 1 else 0.0,
        "top5": mean("quant_top5"), "drop": float_top1 - mean("quant_top1"),
        "nearest_top1": mean("nearest_top1"), "calib_seconds": mean("calib_seconds"),
        "ms_per_iter": None if None in ms else statistics.mean(ms),
        "calib_reference_iters": None if None in refs else statistics.mean(refs),
        "peak_rss_mb": max(v["peak_rss_mb"] for v in values), "size_mb": values[0]["size_mb"],
        "onnx_top1": mean("onnx_top1"),
        "onnx_argmax_mismatch": sum(v["onnx_argmax_mismatch"] for v in values),
        "machine": values[0]["machine"], "per_seed": {str(s): records[s] for s in seeds},
    }


def suite_row(model: str, setting: str, method: str, seeds: list[int], runs: Path,
              committed: dict | None, existing_only: bool = False) -> dict | None:
    """A suite's row from, per seed, its run folder, else the committed JSON's record, else a
    new calibration (none with ``existing_only``; None: nothing to tabulate). A committed row
    written before rows kept ``per_seed`` is returned as it is while no run folder of its seeds
    exists (the seeds of a mean cannot be told apart to mix it with new runs)."""
    local = {s: run_row(model, setting, method, s, runs, existing_only=True) for s in seeds}
    if (committed is not None and "per_seed" not in committed
            and sorted(committed["seeds"]) == sorted(seeds)
            and all(report is None for report in local.values())):
        return committed
    kept = recorded_seeds(committed) if committed is not None else {}
    records = {}
    for seed in seeds:
        if local[seed] is None and seed in kept:
            records[seed] = kept[seed]
            continue
        report = local[seed]
        if report is None and not existing_only:
            report = run_row(model, setting, method, seed, runs)
        if report is not None:
            records[seed] = seed_record(report)
    if not records:
        return None
    return table_row(model, setting, method, float_top1(model), records)


def row_key(row: dict) -> tuple[str, str, str]:
    return row["model"], row["setting"], row["method"]


def other_suites_rows(out: Path, suite: str) -> dict[tuple[str, str, str], dict]:
    """The rows of the other suites' JSON in ``out``, by (model, setting, method), the one with
    most seeds where several hold it. A row is one command whatever suite runs it, so a suite
    reuses another's seeds instead of calibrating them again (``--reuse-suites``: the tau
    suite's tau = 0.5 rows are the main and MobileNetV2 suites' ``attention`` rows)."""
    own = f"accuracy_{suite}.json"
    return most_seeded_rows([p for p in sorted(out.glob("accuracy_*.json")) if p.name != own])


def suite_command(suite: str, rows: list[dict], defaults: dict[tuple[str, str, str], list[int]],
                  reuse_suites: bool = False, folders: str = "") -> str:
    """The command that writes every row of a suite's JSON again, seeds included: the suite's
    own where each row has its block's seeds (``defaults``, by ``row_key``), else one command
    per seed list, model and set of settings, filtered to those rows, joined by " ; " (a run
    with ``--seeds`` and filters writes only some rows, and the file's other rows stay).
    ``folders`` (``folder_options``) ends each command: where the runs and the JSON went."""
    head = f"python benchmarks/accuracy.py --suite {suite}"
    tail = (" --reuse-suites" if reuse_suites else "") + folders
    if all(sorted(row["seeds"]) == sorted(defaults.get(row_key(row), ())) for row in rows):
        return head + tail
    settings: dict[tuple[tuple[int, ...], str, str], list[str]] = {}
    for row in rows:
        key = (tuple(sorted(row["seeds"])), row["model"], row["method"])
        settings.setdefault(key, []).append(row["setting"])
    methods: dict[tuple[tuple[int, ...], str, tuple[str, ...]], list[str]] = {}
    for (seeds, model, method), names in settings.items():
        methods.setdefault((seeds, model, tuple(names)), []).append(method)
    return " ; ".join(
        f"{head} --models {model} --settings {' '.join(names)} --methods {' '.join(ms)} "
        f"--seeds {' '.join(map(str, seeds))}{tail}"
        for (seeds, model, names), ms in methods.items())


def folder_options(runs: Path, out: Path) -> str:
    """``--runs``/``--out`` as a suite's recorded command needs them: each one given where it
    is not the default folder, relative to the repository where it lies inside it."""
    def shown(path: Path) -> str:
        path = path.resolve()
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    return "".join(f" {flag} {shown(path)}" for flag, path, default in (
        ("--runs", runs, DEFAULT_RUNS), ("--out", out, DEFAULT_OUT))
        if path.resolve() != default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--suite", choices=sorted(SUITES))
    group.add_argument("--quick", action="store_const", const="quick", dest="suite")
    group.add_argument("--full", action="store_const", const="full", dest="suite")
    parser.add_argument("--models", nargs="+", help="default: the suite's")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="every row with these seeds (default: the suite's; 0 1 2 for "
                             "--full, else 0 where the suite names none)")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    parser.add_argument("--settings", nargs="+", help="only these settings of the suite")
    parser.add_argument("--methods", nargs="+", help="only these methods of the suite")
    parser.add_argument(
        "--existing-only",
        action="store_true",
        help="tabulate the runs already done and the JSON's rows, start none",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--reuse-suites",
        action="store_true",
        help="take the seeds this suite's JSON lacks from the other suites' JSON in --out (a "
        "row is the same command in every suite) instead of calibrating them again",
    )
    args = parser.parse_args()
    suite_models, plan = SUITES[args.suite]
    unknown = sorted(set(args.methods or []) - {m for b in plan for m in b.methods})
    if unknown:
        parser.error(f"--methods: {', '.join(unknown)} not in suite {args.suite!r}")
    models = args.models or suite_models
    default_seeds = list(SEEDS3) if args.suite == "full" else [0]
    path = args.out / f"accuracy_{args.suite}.json"
    # the committed rows: reused seed by seed, and kept where this run does not reach them
    committed = read_result(path)["rows"] if path.is_file() else []
    by_key = {row_key(row): row for row in committed}
    elsewhere = other_suites_rows(args.out, args.suite) if args.reuse_suites else {}
    # each row's seeds as its block names them (the suite's command runs these), then this run's
    defaults = {(model, s, m): list(block.seeds or default_seeds)
                for model in dict.fromkeys([*suite_models, *models]) for block in plan
                if block.models is None or model in block.models
                for s in block.settings for m in block.methods}
    plan_rows = [(*key, list(args.seeds or seeds)) for key, seeds in defaults.items()]
    rows = {}
    print(HEADER)
    for model, setting, method, seeds in plan_rows:
        key = (model, setting, method)
        if (model not in models or (args.settings and setting not in args.settings)
                or (args.methods and method not in args.methods)):
            if key in by_key:  # outside this run's filter: the committed row stays
                rows[key] = by_key[key]
            continue
        reuse = by_key.get(key) or elsewhere.get(key)
        row = suite_row(model, setting, method, seeds, args.runs, reuse,
                        args.existing_only) or reuse
        if row is not None:
            rows[key] = row
            print(row_line(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = suite_command(args.suite, list(rows.values()), defaults, args.reuse_suites,
                            folder_options(args.runs, args.out))
    result = {"suite": args.suite, "command": command, "rows": list(rows.values())}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
