"""The mixed-precision report: a per-layer table, model sizes, and a bits-per-layer bar plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.table import Table

from .allocation import Allocation


def mixed_report(allocation: Allocation, bit_list: list[int],
                 budget_bits: int | None = None) -> dict[str, Any]:
    """report.json's ``mixed`` entry: the table, the mixed size and single-precision sizes.

    Single-precision sizes keep the first/last layers at their own (fixed) bits, as the mixed
    model does, so the columns compare like with like. ``eps2`` is the eps^2 the allocation
    used (in budget mode the one the search picked), ``cluster_bits`` the bits each cluster got.
    """
    rows = allocation.rows
    single = {str(b): allocation.uniform_size_mb(b) for b in bit_list}
    return {
        "bit_list": list(bit_list),
        "eps2": allocation.eps2,
        "budget_mb": allocation.budget_mb,
        "budget_bits": budget_bits,
        "cluster_bits": allocation.cluster_bits,
        "size_mb": allocation.size_mb(),
        "single_precision_size_mb": single,
        "layers": [
            {
                "name": r.name,
                "params": r.params,
                "coding_length": None if math.isnan(r.length) else r.length,
                "bits": r.bits,
                "fixed": r.fixed,
            }
            for r in rows
        ],
    }


def mixed_table(report: dict[str, Any]) -> Table:
    budget = "" if report["budget_mb"] is None else f", budget {report['budget_mb']:.4f} MB"
    table = Table(title=f"mixed precision {report['bit_list']}: {report['size_mb']:.4f} MB "
                        f"(eps² {report['eps2']:.3g}{budget})")
    for col in ("layer", "params", "L(W) bits", "w_bits"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for row in report["layers"]:
        length = "fixed" if row["coding_length"] is None else f"{row['coding_length']:.1f}"
        table.add_row(row["name"], str(row["params"]), length, str(row["bits"]))
    singles = ", ".join(f"W{b}: {s:.4f}" for b, s in report["single_precision_size_mb"].items())
    table.caption = f"single precision (first/last layers fixed): {singles} MB"
    return table


def bits_figure(report: dict[str, Any], title: str) -> Figure:
    """Bar plot of weight bits per layer in forward order (the paper's figures 3-5). A bare
    ``Figure``, not pyplot: no backend is chosen and no global state touched (``savefig``
    renders with Agg for a PNG)."""
    layers = report["layers"]
    fig = Figure(figsize=(max(6.0, 0.35 * len(layers)), 3.6))
    ax = fig.subplots()
    colors = ["0.6" if row["fixed"] else "tab:blue" for row in layers]
    ax.bar(range(len(layers)), [row["bits"] for row in layers], color=colors)
    ax.set_xticks(range(len(layers)), [row["name"] for row in layers], rotation=90, fontsize=7)
    ax.set_ylabel("weight bits")
    ax.set_title(f"{title}: {report['size_mb']:.3f} MB (grey: first/last layer, fixed)")
    ax.set_ylim(0, max(row["bits"] for row in layers) + 1)
    fig.tight_layout()
    return fig


def save_bits_plot(report: dict[str, Any], title: str, path: Path) -> Figure:
    fig = bits_figure(report, title)
    fig.savefig(path, dpi=120)
    return fig
