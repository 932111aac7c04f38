"""Accuracy benchmark: calibrate the embedded models at several bit widths and methods.

Every row is one ``attnround-pl calibrate`` run in its own process (so peak RSS is the row's
own), in ``benchmarks/runs/<row>/``; a row whose run folder already holds a report is read, not
re-run, so an interrupted benchmark continues where it stopped. Prints a markdown table and
writes ``benchmarks/results/accuracy_<suite>.json``.

    .venv/bin/python benchmarks/accuracy.py --suite aquant [--models resnet20] [--seeds 0 1 2]

Suites:
    aquant   Attention Round with the 0.5 activation border and with AQuant's learned border,
             W2A2 / W3A3 / W4A4 (the AQuant issue's rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "attnround_pl.cli"]

SETTINGS = {"W4A32": (4, 32), "W3A32": (3, 32), "W4A4": (4, 4), "W3A3": (3, 3),
            "W2A4": (2, 4), "W2A2": (2, 2)}  # fmt: skip

# method name -> calibrate options on top of configs/<model>_w4a4.yaml
METHODS = {
    "attention": [],
    "attention+aquant": ["--quant.act_border", "aquant"],
    "attention+aquant+global": [
        "--quant.act_border",
        "aquant",
        "--quant.act_border_global",
        "true",
    ],  # fmt: skip
    "adaround": ["--quant.rounding", "adaround"],
}

SUITES = {
    "aquant": (["W2A2", "W3A3", "W4A4"], ["attention", "attention+aquant"]),
}


def run_row(model: str, setting: str, method: str, seed: int, runs: Path) -> dict:
    """One calibration (or its earlier report); returns the report."""
    name = f"{model}_{setting}_{method}_s{seed}".replace("+", "-")
    report = runs / name / "report.json"
    if not report.is_file():
        w_bits, a_bits = SETTINGS[setting]
        cmd = [*CLI, "calibrate", "--config", str(ROOT / "configs" / f"{model}_w4a4.yaml"),
               "--quant.w_bits", str(w_bits), "--quant.a_bits", str(a_bits),
               "--seed_everything", str(seed), *METHODS[method],
               "--run.out_dir", str(runs), "--run.name", name, "--run.progress", "false",
               "--run.eval_float", "false", "--run.export", "[onnx]"]  # fmt: skip
        print(f"# {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"# {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(report.read_text())


def float_top1(model: str) -> float:
    from attnround_pl.models import embedded_info

    return float(embedded_info(model)["float_top1"])


def summarise(reports: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in reports]
    return statistics.mean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    settings, methods = SUITES[args.suite]
    rows = []
    print("| model | setting | method | top-1 % | drop from float | nearest top-1 % | "
          "calibration s | peak RSS MB | ONNX top-1 % (argmax differ) |")  # fmt: skip
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in args.models:
        fl = float_top1(model)
        for setting in settings:
            for method in methods:
                reports = [run_row(model, setting, method, s, args.runs) for s in args.seeds]
                top1, spread = summarise(reports, "quant_top1")
                row = {
                    "model": model, "setting": setting, "method": method, "seeds": args.seeds,
                    "float_top1": fl, "top1": top1, "top1_std": spread,
                    "top5": summarise(reports, "quant_top5")[0], "drop": fl - top1,
                    "nearest_top1": summarise(reports, "nearest_top1")[0],
                    "calib_seconds": summarise(reports, "calib_seconds")[0],
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
                    "size_mb": reports[0]["size_mb"],
                    "onnx_top1": summarise(reports, "onnx_top1")[0],
                    "onnx_argmax_mismatch": sum(r["onnx_argmax_mismatch"] for r in reports),
                    "machine": reports[0]["machine"],
                }  # fmt: skip
                rows.append(row)
                pm = f" ± {spread:.2f}" if len(args.seeds) > 1 else ""
                print(f"| {model} | {setting} | {method} | {top1:.2f}{pm} | {row['drop']:.2f} | "
                      f"{row['nearest_top1']:.2f} | {row['calib_seconds']:.0f} | "
                      f"{row['peak_rss_mb']:.0f} | {row['onnx_top1']:.2f} "
                      f"({row['onnx_argmax_mismatch']}) |", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    result = {"suite": args.suite, "command": command, "rows": rows}
    path = args.out / f"accuracy_{args.suite}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
