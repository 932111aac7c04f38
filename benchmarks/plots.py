"""Plots from the benchmark JSON: top-1 by setting per method, and calibration time against
top-1. Reads ``benchmarks/results/accuracy_*.json``, writes PNGs next to them.

    .venv/bin/python benchmarks/plots.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def load_rows() -> list[dict]:
    rows = []
    for path in sorted(RESULTS.glob("accuracy_*.json")):
        rows += json.loads(path.read_text())["rows"]
    unique = {(r["model"], r["setting"], r["method"]): r for r in rows}  # later files win
    return list(unique.values())


def accuracy_by_setting(rows: list[dict], model: str, path: Path) -> None:
    settings = sorted({r["setting"] for r in rows if r["model"] == model},
                      key=lambda s: (-int(s[1]) if s[1].isdigit() else 0, s))  # fmt: skip
    by_method = defaultdict(dict)
    for r in rows:
        if r["model"] == model:
            by_method[r["method"]][r["setting"]] = r
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for method, cells in sorted(by_method.items()):
        xs = [i for i, s in enumerate(settings) if s in cells]
        ax.errorbar(xs, [cells[settings[i]]["top1"] for i in xs],
                    yerr=[cells[settings[i]]["top1_std"] for i in xs], marker="o",
                    capsize=3, label=method)  # fmt: skip
    float_top1 = next(r["float_top1"] for r in rows if r["model"] == model)
    ax.axhline(float_top1, color="grey", linestyle="--", label="float")
    ax.set_xticks(range(len(settings)), settings)
    ax.set(ylabel="top-1 %", title=f"{model}: top-1 by bit setting (Fashion-MNIST test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_vs_accuracy(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["calib_seconds"], r["top1"], s=18)
        ax.annotate(f"{r['model']} {r['setting']} {r['method']}", (r["calib_seconds"], r["top1"]),
                    fontsize=5)  # fmt: skip
    ax.set(xlabel="calibration wall time, s (2-core CPU)", ylabel="top-1 %",
           title="calibration time against accuracy")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    rows = load_rows()
    for model in sorted({r["model"] for r in rows}):
        accuracy_by_setting(rows, model, RESULTS / f"accuracy_{model}.png")
    time_vs_accuracy(rows, RESULTS / "time_vs_accuracy.png")
    print(f"{len(rows)} rows -> {sorted(p.name for p in RESULTS.glob('*.png'))}")


if __name__ == "__main__":
    main()
