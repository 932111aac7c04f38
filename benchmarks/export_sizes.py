"""Export file sizes and agreement with PyTorch: both embedded models, ONNX at opset 21 and 18,
the packed state file.

For ResNet-20 and MobileNetV2 (Fashion-MNIST) at W4A4, W2A4 and mixed [3,4,5,6] (A4), one
calibration with the ``nearest`` recipe (no reconstruction: file sizes do not depend on the
rounding, and the check is of the export path), then ``attnround-pl export --format onnx`` at
opset 21 (the default below 5 bits: INT4/UINT4 codes) and at opset 18 (8-bit types). Each
export is compared with the PyTorch model on the 10k test images in onnxruntime; the state file
(``--format state``: codes packed at their bits) is reloaded and compared the same way. Prints a
markdown table and writes ``benchmarks/results/export_sizes.json``; runs go to
``benchmarks/runs/export_sizes/`` (a finished calibration there is reused).

    .venv/bin/python benchmarks/export_sizes.py          # about 10 min on 2 cores
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from result_json import write_result

from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.report import OnnxCheck, Report, StateCheck

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "export_sizes"
CLI = [sys.executable, "-m", "attnround_pl.cli"]
MODELS = ("resnet20", "mobilenetv2")
SETTINGS = {"W4A4": [], "W2A4": ["configs/precision/w2a4.yaml"],
            "MP3456": ["configs/precision/mixed3456.yaml"]}
OPSETS = (21, 18)


def _run(args: list[str]) -> None:
    subprocess.run([*CLI, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def calibrated(model: str, setting: str) -> Path:
    """The run folder of ``model`` at ``setting`` with the nearest recipe (made if missing)."""
    run_dir = RUNS / f"{model}_{setting}"
    if not (run_dir / "report.json").is_file():
        configs = [f"configs/models/{model}.yaml", "configs/recipes/nearest.yaml",
                   *SETTINGS[setting]]
        _run(["calibrate", *[a for c in configs for a in ("--config", c)],
              "--run.out_dir", str(RUNS), "--run.name", run_dir.name, "--run.progress", "false",
              "--run.eval_float", "false", "--run.eval_nearest", "false",
              "--run.overwrite", "true"])
    return run_dir


def exported(run_dir: Path, opset: int) -> OnnxCheck:
    """Export ``run_dir`` at ``opset`` and return its check (from the run's report)."""
    _run(["export", "--run", str(run_dir), "--format", "onnx", "--opset", str(opset),
          "--out", str(run_dir / f"quantized_opset{opset}.onnx")])
    return Report.read(run_dir / "report.json").onnx


def exported_state(run_dir: Path) -> StateCheck:
    """Export ``run_dir``'s state file and return its check (from the run's report)."""
    _run(["export", "--run", str(run_dir), "--format", "state"])
    return Report.read(run_dir / "report.json").state


def row(model: str, setting: str, report: Report, checks: dict[int, OnnxCheck],
        state: StateCheck) -> dict:
    """One table row: the model's weight size at its bits and each opset's file and agreement."""
    return {
        "model": model, "setting": setting, "size_mb": report.size_mb,
        "torch_top1": report.quantized.top1,
        **{f"opset{o}": {"file_bytes": c.file_bytes, "weight_code_bytes": c.weight_code_bytes,
                         "onnx_top1": c.top1, "argmax_mismatch": c.argmax_mismatch,
                         "max_abs_logit_diff": c.max_abs_logit_diff, "images": c.images}
           for o, c in checks.items()},
        "state": {"file_bytes": state.file_bytes, "weight_code_bytes": state.weight_code_bytes,
                  "max_abs_diff": state.max_abs_diff, "images": state.images},
    }


def markdown(rows: list[dict]) -> str:
    head = ["model", "setting", "weights at their bits (KiB)", "ONNX opset 21 (KiB)",
            "weight codes 21 (KiB)", "ONNX opset 18 (KiB)", "weight codes 18 (KiB)",
            "PyTorch / onnxruntime top-1 % (21; 18)", "differing predictions (21; 18)",
            "state file (KiB)", "state weight codes (KiB)", "state reload max diff"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * 10) + " |"]
    for r in rows:
        a, b, st = r["opset21"], r["opset18"], r["state"]
        lines.append("| " + " | ".join([
            r["model"], r["setting"], f"{r['size_mb'] * 1024:.1f}",
            f"{a['file_bytes'] / 1024:.1f}", f"{a['weight_code_bytes'] / 1024:.1f}",
            f"{b['file_bytes'] / 1024:.1f}", f"{b['weight_code_bytes'] / 1024:.1f}",
            f"{r['torch_top1']:.2f} / {a['onnx_top1']:.2f}; {b['onnx_top1']:.2f}",
            f"{a['argmax_mismatch']}; {b['argmax_mismatch']}",
            f"{st['file_bytes'] / 1024:.1f}", f"{st['weight_code_bytes'] / 1024:.1f}",
            f"{st['max_abs_diff']:.3g}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    rows = []
    for model in MODELS:
        for setting in SETTINGS:
            run_dir = calibrated(model, setting)
            checks = {opset: exported(run_dir, opset) for opset in OPSETS}
            state = exported_state(run_dir)
            rows.append(row(model, setting, Report.read(run_dir / "report.json"), checks, state))
            print(f"# {model} {setting}: done", file=sys.stderr, flush=True)
    write_result(RESULTS / "export_sizes.json", {"command": "python benchmarks/export_sizes.py",
                                                 "machine": machine(), "rows": rows})
    print(markdown(rows))


if __name__ == "__main__":
    main()
