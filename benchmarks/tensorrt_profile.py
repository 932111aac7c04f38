"""The TensorRT profile's accuracy cost: W8A8 on the default grid against ``quant.profile:
tensorrt``, both embedded models, with the structural TensorRT check and onnxruntime.

For ResNet-20 and MobileNetV2 (Fashion-MNIST), each seed and each profile: one calibration
through the command line (``configs/models/<model>.yaml`` + a recipe + W8A8: ``--quant.w_bits 8
--quant.a_bits 8`` for the default grid, ``configs/precision/int8_tensorrt.yaml`` for the
profile with each layer's input quantized (``tensorrt``) and with each block's input quantized,
the file's own placement (``tensorrt_blocks``)), then ``attnround-pl export --format onnx``
(opset 18, compared with the PyTorch model in onnxruntime on the 10k test images), then
``export.tensorrt_check.check_tensorrt_graph`` on the file. A seed (``--seed_everything``) picks
the 1,024 calibration images and the values each activation quantizer's MSE search sees, so with
the ``nearest`` recipe (no reconstruction; the weights' MSE scales and nearest codes do not
depend on it) it moves the activation steps only. Prints a markdown table and writes
``benchmarks/results/tensorrt_profile.json``; runs go to ``benchmarks/runs/tensorrt_profile/``
(a finished calibration and its checked export there are reused).

    .venv/bin/python benchmarks/tensorrt_profile.py                 # nearest, 3 seeds
    .venv/bin/python benchmarks/tensorrt_profile.py --attention     # + attention.yaml, seed 0
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
from pathlib import Path

from result_json import commands_with, read_earlier, script_command, write_result

from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.report import OnnxCheck, Report
from attnround_pl.export.tensorrt_check import TensorRTCheck, check_tensorrt_graph

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "tensorrt_profile"
CLI = [sys.executable, "-m", "attnround_pl.cli"]
MODELS = ("resnet20", "mobilenetv2")
TENSORRT = ["--config", "configs/precision/int8_tensorrt.yaml"]
# the profile file's activation placement (since 2026-12-03): one quantizer at each block's
# input, so an identity shortcut's Add reads Q/DQ data (TensorRT's residual recommendation);
# "tensorrt" keeps each layer's input quantized, as that file did before
BLOCKS = ["--quant.act_placement", "blocks"]
PROFILES = {"default": ["--quant.w_bits", "8", "--quant.a_bits", "8"],
            "tensorrt": [*TENSORRT, "--quant.act_placement", "layers"],
            "tensorrt_blocks": [*TENSORRT, *BLOCKS]}
SEEDS = (0, 1, 2)


def _run(args: list[str]) -> None:
    subprocess.run([*CLI, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def calibrate_args(model: str, recipe: str, profile: str, seed: int) -> list[str]:
    """The ``attnround-pl calibrate`` arguments of one row (without the run folder); with the
    block placement a reconstruction learns each block's input quantizer with the block before
    it, as the peers' code does (``recon.block_output_steps``)."""
    learns = BLOCKS[-1] in PROFILES[profile] and recipe != "nearest"
    order = ["--recon.block_output_steps", "true" if learns else "false"]
    return ["--config", f"configs/models/{model}.yaml",
            "--config", f"configs/recipes/{recipe}.yaml",
            *PROFILES[profile], *order, "--seed_everything", str(seed)]


def calibrated(model: str, recipe: str, profile: str, seed: int) -> Path:
    """The run folder of one row (made if missing); the float model is evaluated in each."""
    run_dir = RUNS / f"{model}_{recipe}_{profile}_s{seed}"
    if not (run_dir / "report.json").is_file():
        _run(["calibrate", *calibrate_args(model, recipe, profile, seed),
              "--run.out_dir", str(RUNS), "--run.name", run_dir.name, "--run.progress", "false",
              "--run.eval_nearest", "false", "--run.overwrite", "true"])
    return run_dir


def exported(run_dir: Path) -> tuple[OnnxCheck, TensorRTCheck]:
    """Export ``run_dir`` to ONNX (the default opset: 18 at W8A8; an export the run's report
    already checked is reused), its onnxruntime check (from the report) and its TensorRT
    check."""
    out = run_dir / "quantized.onnx"
    check = Report.read(run_dir / "report.json").onnx
    if not out.is_file() or check is None or check.path != str(out):
        _run(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(out)])
        check = Report.read(run_dir / "report.json").onnx
    return check, check_tensorrt_graph(out)


def row(model: str, recipe: str, profile: str, seed: int, report: Report, onnx: OnnxCheck,
        trt: TensorRTCheck) -> dict:
    """One calibration: its top-1, onnxruntime's agreement and the TensorRT check."""
    return {
        "model": model, "recipe": recipe, "profile": profile, "seed": seed,
        "float_top1": report.float_model.top1 if report.float_model else None,
        "top1": report.quantized.top1, "calib_seconds": report.calib_seconds,
        "onnx": {"top1": onnx.top1, "torch_top1": onnx.torch_top1,
                 "argmax_mismatch": onnx.argmax_mismatch,
                 "max_abs_logit_diff": onnx.max_abs_logit_diff, "images": onnx.images,
                 "opset": onnx.opset, "code_divergence": onnx.code_divergence},
        "tensorrt_check": {"passed": trt.passed, "violations": len(trt.violations),
                           "violation_rules": trt.counts(), "warnings": len(trt.warnings),
                           "warning_rules": trt.counts("warnings"),
                           "weighted_ops": trt.weighted_ops, "quantized_ops": trt.quantized_ops,
                           "first_violation": trt.violations[0].message if trt.violations
                           else None},
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(rows: list[dict]) -> list[dict]:
    """Per (model, recipe): top-1 of each profile over its seeds, the profile's cost (tensorrt
    minus default, mean over seeds, paired by seed), checker counts and onnxruntime agreement;
    where the recipe ran with the block placement too, ``tensorrt_blocks`` and its cost against
    the profile at the default placement (``difference_blocks``, paired by seed)."""
    out = []
    keys = dict.fromkeys((r["model"], r["recipe"]) for r in rows)
    for model, recipe in keys:
        mine = [r for r in rows if (r["model"], r["recipe"]) == (model, recipe)]
        by = {p: {r["seed"]: r for r in mine if r["profile"] == p} for p in PROFILES}
        seeds = sorted(set(by["default"]) & set(by["tensorrt"]))
        entry = {"model": model, "recipe": recipe, "seeds": seeds,
                 "float_top1": next(r["float_top1"] for r in mine)}
        if set(seeds) <= set(by["tensorrt_blocks"]):
            entry["difference_blocks"] = _mean_sd([by["tensorrt_blocks"][s]["top1"]
                                                   - by["tensorrt"][s]["top1"] for s in seeds])
        else:
            del by["tensorrt_blocks"]
        for p, runs in by.items():
            top1 = [runs[s]["top1"] for s in seeds]
            entry[p] = {
                "top1": _mean_sd(top1), "top1_by_seed": top1,
                "violations": [runs[s]["tensorrt_check"]["violations"] for s in seeds],
                "violation_rules": runs[seeds[0]]["tensorrt_check"]["violation_rules"],
                "warnings": runs[seeds[0]]["tensorrt_check"]["warnings"],
                "argmax_mismatch": max(runs[s]["onnx"]["argmax_mismatch"] for s in seeds),
                "max_abs_logit_diff": max(runs[s]["onnx"]["max_abs_logit_diff"] for s in seeds),
                "onnx_equals_torch_top1": all(
                    runs[s]["onnx"]["top1"] == runs[s]["top1"] for s in seeds),
            }
        entry["difference"] = _mean_sd([by["tensorrt"][s]["top1"] - by["default"][s]["top1"]
                                        for s in seeds])
        out.append(entry)
    return out


def _pm(value: tuple[float, float], n: int, sign: bool = False) -> str:
    mean, sd = value
    text = f"{mean:+.2f}" if sign else f"{mean:.2f}"
    return f"{text} ± {sd:.2f}" if n > 1 else text


def markdown(entries: list[dict]) -> str:
    """One line per (model, recipe); the block placement's columns are '-' where it did not
    run."""
    head = ["model", "recipe", "seeds", "float top-1 %", "default W8A8 top-1 %",
            "tensorrt W8A8 top-1 %", "difference (pp)", "checker violations (default; tensorrt)",
            "residual-add warnings", "onnxruntime: differing predictions, max logit diff "
            "(default; tensorrt)", "tensorrt, blocks W8A8 top-1 %",
            "blocks - tensorrt (pp)", "blocks: violations; residual-add warnings"]
    lines = ["| " + " | ".join(head) + " |",
             "| " + " | ".join(["---", "---"] + ["---:"] * (len(head) - 2)) + " |"]
    for e in entries:
        n, d, t = len(e["seeds"]), e["default"], e["tensorrt"]
        b = e.get("tensorrt_blocks")
        blocks = (["-", "-", "-"] if b is None else
                  [_pm(b["top1"], n), _pm(e["difference_blocks"], n, sign=True),
                   f"{max(b['violations'])}; {b['warnings']}"])
        lines.append("| " + " | ".join([
            e["model"], e["recipe"], str(n), f"{e['float_top1']:.2f}", _pm(d["top1"], n),
            _pm(t["top1"], n), _pm(e["difference"], n, sign=True),
            f"{max(d['violations'])}; {max(t['violations'])}", str(t["warnings"]),
            f"{d['argmax_mismatch']}, {d['max_abs_logit_diff']:.3f}; "
            f"{t['argmax_mismatch']}, {t['max_abs_logit_diff']:.3f}", *blocks]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attention", action="store_true",
                        help="also calibrate with configs/recipes/attention.yaml at seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--profiles", nargs="+", choices=list(PROFILES), default=list(PROFILES),
                        help="run only these (the JSON's rows of the others are kept)")
    args = parser.parse_args(argv)
    plan = [("nearest", s) for s in args.seeds] + ([("attention", 0)] if args.attention else [])
    out = RESULTS / "tensorrt_profile.json"
    old = read_earlier(out)  # a broken file stops here, before any calibration
    rows = []
    for model in MODELS:
        for recipe, seed in plan:
            for profile in args.profiles:
                run_dir = calibrated(model, recipe, profile, seed)
                onnx, trt = exported(run_dir)
                rows.append(row(model, recipe, profile, seed,
                                Report.read(run_dir / "report.json"), onnx, trt))
                print(f"# {model} {recipe} {profile} seed {seed}: top-1 {rows[-1]['top1']:.2f}, "
                      f"{len(trt.violations)} violations", file=sys.stderr, flush=True)
    rows = merged(old.get("rows", []), rows)
    command = script_command("tensorrt_profile.py", argv or None)
    entries = summary(rows)
    write_result(out, {
        "commands": commands_with(old, command), "machine": machine(),
        "date": datetime.date.today().isoformat(), "summary": entries, "rows": rows})
    print(markdown(entries))


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows this run did not redo (by model, recipe, profile and seed), then ``new``."""
    def key(r: dict) -> tuple:
        return r["model"], r["recipe"], r["profile"], r["seed"]

    done = {key(r) for r in new}
    return [*(r for r in old if key(r) not in done), *new]


if __name__ == "__main__":
    main()
