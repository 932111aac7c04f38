"""The mixed-precision report: a per-layer table, model sizes, and a bits-per-layer bar plot."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from .allocation import Allocation

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class MixedLayer:
    """One layer of the allocation: its weight count, coding length L(W) in bits (None: a
    first/last layer at fixed bits) and the bits it got."""

    name: str
    params: int
    coding_length: float | None
    bits: int
    fixed: bool
    output_error: float | None = None  # sensitivity: the output MSE with it alone at bits


@dataclass
class MixedReport:
    """report.json's ``mixed`` entry: the allocation, the mixed size and the single-precision
    sizes (MB) by bits.

    Single-precision sizes keep the first/last layers at their own (fixed) bits, as the mixed
    model does, so the columns compare like with like. ``eps2`` is the eps^2 the allocation
    used (in budget mode the one the search picked), ``cluster_bits`` the bits each cluster got.
    """

    bit_list: list[int]
    eps2: float
    budget_mb: float | None
    budget_bits: int | None
    cluster_bits: list[int]
    size_mb: float
    single_precision_size_mb: dict[str, float] = field(default_factory=dict)
    layers: list[MixedLayer] = field(default_factory=list)
    method: str = "coding_length"  # MixedConfig.method

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixedReport:
        return cls(**{**data, "layers": [MixedLayer(**row) for row in data["layers"]]})

    def layer_bits(self) -> dict[str, int]:
        return {row.name: row.bits for row in self.layers}


def mixed_report(allocation: Allocation, bit_list: list[int],
                 budget_bits: int | None = None) -> MixedReport:
    """The report of ``allocation`` made from ``bit_list`` (see ``MixedReport``)."""
    return MixedReport(
        bit_list=list(bit_list),
        eps2=allocation.eps2,
        budget_mb=allocation.budget_mb,
        budget_bits=budget_bits,
        cluster_bits=allocation.cluster_bits,
        size_mb=allocation.size_mb(),
        single_precision_size_mb={str(b): allocation.uniform_size_mb(b) for b in bit_list},
        layers=[MixedLayer(r.name, r.params, None if math.isnan(r.length) else r.length, r.bits,
                           r.fixed, r.error) for r in allocation.rows],
        method=allocation.method,
    )


def mixed_table(report: MixedReport) -> Table:
    budget = "" if report.budget_mb is None else f", budget {report.budget_mb:.4f} MB"
    by_error = report.method == "sensitivity"
    how = "by sensitivity" if by_error else f"eps² {report.eps2:.3g}"
    table = Table(title=f"mixed precision {report.bit_list}: {report.size_mb:.4f} MB "
                        f"({how}{budget})")
    measure = "output MSE alone" if by_error else "L(W) bits"
    for col in ("layer", "params", measure, "w_bits"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for row in report.layers:
        value = row.output_error if by_error else row.coding_length
        shown = ("fixed" if row.fixed else "-" if value is None
                 else f"{value:.3e}" if by_error else f"{value:.1f}")
        table.add_row(row.name, str(row.params), shown, str(row.bits))
    singles = ", ".join(f"W{b}: {s:.4f}" for b, s in report.single_precision_size_mb.items())
    table.caption = f"single precision (first/last layers fixed): {singles} MB"
    return table


def bits_figure(report: MixedReport, title: str) -> Figure:
    """Bar plot of weight bits per layer in forward order (the paper's figures 3-5). A bare
    ``Figure``, not pyplot: no backend is chosen and no global state touched (``savefig``
    renders with Agg for a PNG)."""
    from matplotlib.figure import Figure

    layers = report.layers
    fig = Figure(figsize=(max(6.0, 0.35 * len(layers)), 3.6))
    ax = fig.subplots()
    colors = ["0.6" if row.fixed else "tab:blue" for row in layers]
    ax.bar(range(len(layers)), [row.bits for row in layers], color=colors)
    ax.set_xticks(range(len(layers)), [row.name for row in layers], rotation=90, fontsize=7)
    ax.set_ylabel("weight bits")
    ax.set_title(f"{title}: {report.size_mb:.3f} MB (grey: first/last layer, fixed)")
    ax.set_ylim(0, max(row.bits for row in layers) + 1)
    fig.tight_layout()
    return fig


def save_bits_plot(report: MixedReport, title: str, path: Path) -> Figure:
    fig = bits_figure(report, title)
    fig.savefig(path, dpi=120)
    return fig
