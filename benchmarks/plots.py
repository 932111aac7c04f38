"""Plots and the benchmark tables from the benchmark JSON: top-1 by setting per method, top-1
against Attention Round's tau (the paper's figure 2), calibration time against top-1, top-1
against size for mixed precision (the paper's table 4), issue 34's goal in the peers'
placement (its recipes by setting, and time against top-1 with the goal's region), one
markdown table per suite, and README's headline table. Reads
``benchmarks/results/accuracy_*.json``, writes PNGs next to them, prints the tables and
rewrites docs/benchmarks.md's table blocks from the JSON (the ``goal`` and
``goal_like_for_like`` blocks computed from the suites, the ``levers`` block from
``levers_*.json``, see lever_table.py, the ``paired`` block from ``goal_paired_*/paired_*.json``,
see paired_table.py; README is never written: ``--headline`` prints its block, which
tests/docs/test_readme.py compares).

    .venv/bin/python benchmarks/plots.py              # plots + docs/benchmarks.md's tables
    .venv/bin/python benchmarks/plots.py --headline   # README's headline block, printed
    .venv/bin/python benchmarks/plots.py --check      # exit 1 if docs/benchmarks.md is stale
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import matplotlib.pyplot as plt
from lever_table import lever_table
from markdown_table import HEADER, missing_columns, row_line
from paired_table import paired_table
from result_json import most_seeded_rows, read_result
from table_names import LIKE_FOR_LIKE
from table_names import MODEL_NAMES as HEADLINE_MODELS
from table_names import SETTINGS as HEADLINE_SETTINGS

RESULTS = Path(__file__).resolve().parent / "results"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
OFF_SCALE_DROP = 20
ZOOM_DROP = 5  # the accuracy plots show float - 5 pp and up: the methods that reconstruct
DODGE = 0.04  # x offset between methods in the accuracy plots, in settings


TAU_PREFIX = "attention_tau"
PAPER_TAU = 0.5  # the plain "attention" rows
SINGLE_A4 = ("W3A4", "W4A4", "W5A4")  # the uniform rows the mixed ones are compared with
# the benchmarks issue's settings in plot order, drawn by accuracy_by_setting (W3A4/W5A4: the
# size plot's)
SETTINGS = ("W4A32", "W3A32", "W4A4", "W3A3", "W2A4", "W2A2")


def result_paths() -> list[Path]:
    """The suites' JSON files, ``HEADLINE_SUITES`` first in their order (the recipes suite ran
    the current code), then the others in name order."""
    first = {name: i for i, name in enumerate(HEADLINE_SUITES)}
    return sorted(RESULTS.glob("accuracy_*.json"),
                  key=lambda p: (first.get(p.name, len(first)), p.name))


# suites whose rows the plots leave out (their tables stay): the like-for-like suite runs
# every method with the peers' activation placement, unlike every other suite, and a collapsed
# row there (BRECQ's 10 % at MobileNetV2 W2A2) would squash its panel
UNPLOTTED_SUITES = ("accuracy_like_for_like.json",)
# and every earlier run a re-run replaced, kept under its suite's name and the date of its rows
# (accuracy_<suite>_<date>[_<what>].json: e.g. the suites as first run before issue 31's fused
# quantizers, or the default's rows before a change to it; docs/benchmarks.md says which)
EARLIER_RUN = re.compile(r"^accuracy_\w+?_\d{4}-\d{2}-\d{2}(_\w+)?\.json$")


def plotted(path: Path) -> bool:
    """Whether the plots read ``path``'s rows: not ``UNPLOTTED_SUITES``, not an earlier run."""
    return path.name not in UNPLOTTED_SUITES and not EARLIER_RUN.match(path.name)


def load_rows() -> list[dict]:
    """Every row of every ``plotted`` suite, once per (model, setting, method): the one with
    most seeds, the first read among equals (``result_paths``' order)."""
    paths = [p for p in result_paths() if plotted(p)]
    return list(most_seeded_rows(paths).values())


def method_colours(rows: list[dict]) -> dict[str, tuple]:
    """One colour per method over every row, so a method has the same colour in every plot."""
    palette = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b") for i in range(20)]
    return {m: palette[i % len(palette)]
            for i, m in enumerate(sorted({r["method"] for r in rows}))}


def tau_of(method: str) -> float | None:
    """Attention Round's tau of a method name (None: not an Attention Round row)."""
    if method == "attention":
        return PAPER_TAU
    return float(method[len(TAU_PREFIX) :]) if method.startswith(TAU_PREFIX) else None


def dodge(index: int, count: int) -> float:
    """x offset of the index-th of count methods, centred on the setting, so equal values at
    one setting do not hide each other."""
    return DODGE * (index - (count - 1) / 2)


def gapped(points: list[tuple[int, float, float]]) -> tuple[list, list, list]:
    """(x, y, error) points at integer x as three lists over every x from the first to the
    last, NaN where a point is missing, so the line breaks there instead of joining the
    neighbours over a setting the method has no row at."""
    if not points:
        return [], [], []
    known = {x: (y, err) for x, y, err in points}
    xs = list(range(min(known), max(known) + 1))
    nan = (float("nan"), float("nan"))
    return xs, [known.get(x, nan)[0] for x in xs], [known.get(x, nan)[1] for x in xs]


def setting_panels(settings: set[str]) -> list[tuple[str, list[str]]]:
    """The single-precision settings as (title, settings) panels: weights only (A32) apart from
    quantized activations, each in ``SETTINGS``' order (falling bits), so a method's line runs
    over one kind only."""
    order = [s for s in SETTINGS if s in settings]
    weights_only = [s for s in order if s.endswith("A32")]
    quantized = [s for s in order if not s.endswith("A32")]
    panels = [("weights only (A32)", weights_only), ("weights and activations", quantized)]
    return [(title, group) for title, group in panels if group]


def accuracy_by_setting(rows: list[dict], model: str, path: Path,
                        colours: dict[str, tuple], what: str = "top-1 by bit setting",
                        bottom: float | None = None) -> None:
    """One line per method over ``SETTINGS`` (tau sweep, mixed and the size plot's W3A4/W5A4
    apart), a panel for the weights-only settings and one for quantized activations; ``what``
    heads the figure's title after the model; values below ``bottom`` (default: float less
    ``ZOOM_DROP``) sit on the bottom edge."""
    rows = [r for r in rows if r["model"] == model and r["setting"] in SETTINGS
            and not r["method"].startswith(TAU_PREFIX)]
    by_method = defaultdict(dict)
    for r in rows:
        by_method[r["method"]][r["setting"]] = r
    float_top1 = rows[0]["float_top1"]
    bottom = float_top1 - ZOOM_DROP if bottom is None else bottom
    panels = setting_panels({r["setting"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4.8), sharey=True, squeeze=False,
                             width_ratios=[len(group) + 1 for _, group in panels])
    # collapsed methods (floor/ceil) would flatten everything else: listed, not drawn
    low = float_top1 - OFF_SCALE_DROP
    off_scale = sorted(m for m, c in by_method.items() if all(r["top1"] < low for r in c.values()))
    for ax, (title, settings) in zip(axes[0], panels, strict=True):
        drawn = sorted(m for m in by_method if m not in off_scale
                       and any(s in by_method[m] for s in settings))
        for i, method in enumerate(drawn):
            draw_method(ax, method, by_method[method], settings, dodge(i, len(drawn)), bottom,
                        colours[method])
        ax.axhline(float_top1, color="grey", linestyle="--", label="float")
        ax.set_xlim(-0.4, len(settings) - 0.3)  # room for the bottom edge's labels
        ax.set_xticks(range(len(settings)), settings)
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylim(bottom - 0.3, float_top1 + 0.5)
    axes[0][0].set_ylabel("top-1 %")
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(),
                                                              strict=True)}
    if off_scale:
        label = f"off scale (> {OFF_SCALE_DROP} pp drop): {', '.join(off_scale)}"
        handles[label] = axes[0][0].plot([], [], " ")[0]
    fig.suptitle(f"{model}: {what} (Fashion-MNIST test; values below "
                 f"{bottom:.1f} on the bottom edge)", fontsize=10)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.8, 1))  # the legend's column on the right
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_method(ax: plt.Axes, method: str, cells: dict[str, dict], settings: list[str],
                shift: float, bottom: float, colour: tuple) -> None:
    """One method's line over ``settings`` (x = index + shift), broken where it has no row; a
    value below ``bottom`` sits on the bottom edge as a triangle with the value written."""
    points = [(x, cells[s]) for x, s in enumerate(settings) if s in cells]
    xs, ys, errs = gapped([(x, max(r["top1"], bottom), r["top1_std"] if r["top1"] >= bottom
                            else 0.0) for x, r in points])
    ax.errorbar([x + shift for x in xs], ys, yerr=errs, marker="o", capsize=3, color=colour,
                label=method)
    for x, r in points:
        if r["top1"] < bottom:
            ax.plot([x + shift], [bottom], marker="v", markersize=9, color=colour)
            # one text line per method already written at this setting's bottom edge
            up = 4 + 9 * sum(round(t.xy[0]) == x for t in ax.texts)
            ax.annotate(f"{method} {r['top1']:.1f}", (x + shift, bottom), xytext=(6, up),
                        textcoords="offset points", fontsize=7, color=colour)


def tau_curves(rows: list[dict]) -> dict[tuple[str, str], list[tuple[float, dict]]]:
    """(model, setting) -> its Attention Round rows as (tau, row), by tau; only those with more
    than one tau."""
    curves = defaultdict(list)
    for r in rows:
        tau = tau_of(r["method"])
        if tau is not None:
            curves[(r["model"], r["setting"])].append((tau, r))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in sorted(curves.items()) if len(v) > 1}


def sweep_rows(rows: list[dict], path: Path | None = None) -> list[dict]:
    """``rows`` with the tau suite's own rows (``path``, default its JSON) in place of the other
    suites' for the same (model, setting, method): its tau = 0.5 rows then come from the sitting
    of its other taus (top-1 moves by about 0.15 pp between sittings on another CPU)."""
    path = RESULTS / "accuracy_tau.json" if path is None else path
    own = most_seeded_rows([path]) if path.is_file() else {}
    return [own.get((r["model"], r["setting"], r["method"]), r) for r in rows]


def tau_sweep(rows: list[dict], path: Path) -> bool:
    """Top-1 against tau, one panel per (model, setting) with more than one tau (their top-1
    ranges are pp apart, their tau curves tenths); False: none."""
    curves = tau_curves(rows)
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves) + 0.6, 3.8),
                             squeeze=False)
    for ax, ((model, setting), points) in zip(axes[0], curves.items(), strict=True):
        ax.errorbar([t for t, _ in points], [r["top1"] for _, r in points],
                    yerr=[r["top1_std"] for _, r in points], marker="o", capsize=3,
                    label="Attention Round")
        nearest = points[0][1]["nearest_top1"]
        label = f"nearest {nearest:.2f}"
        if nearest >= min(r["top1"] for _, r in points) - 1:  # else it would flatten the curve
            ax.axhline(nearest, linestyle=":", color="grey", label=label)
        else:
            ax.plot([], [], " ", label=f"{label} (below)")
        ax.set(xlabel="tau (grid steps)", title=f"{model} {setting}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("top-1 %")
    fig.suptitle("Attention Round: top-1 against tau (cf. the paper's figure 2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


TIME_LEFT_OUT = ("floor", "ceil", "stochastic")  # collapsed or no learning: nothing to time
BUDGET_SUFFIX = "_20k"  # a method run with the peers' budget: joined to its 2k row by a line


def time_panels(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The rows of the time plot by (model, setting), over the settings with quantized
    activations (``HEADLINE_SETTINGS``): the methods that learn, the tau sweep left out;
    round-to-nearest stays (drawn as a level, not a point)."""
    panels: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if (r["setting"] in HEADLINE_SETTINGS and r["method"] not in TIME_LEFT_OUT
                and not r["method"].startswith(TAU_PREFIX)):
            panels[r["model"], r["setting"]].append(r)
    return dict(panels)


TIME_TICKS = (30, 100, 300, 1000, 3000)  # seconds


def time_panel_limits(rows: list[dict], margin: float = 0.15) -> tuple[float, float]:
    """The y range of a time panel: every point with its bar, and ``margin`` of that span
    (at least 0.1 pp) around it."""
    lows = [r["top1"] - (r.get("top1_std") or 0.0) for r in rows]
    highs = [r["top1"] + (r.get("top1_std") or 0.0) for r in rows]
    pad = max(0.1, margin * (max(highs) - min(lows)))
    return min(lows) - pad, max(highs) + pad


def budget_pairs(methods: set[str]) -> list[tuple[str, str]]:
    """(method, method + '_20k') for every method that has both rows: the same recipe at two
    budgets, joined by a line in the time plot."""
    return sorted((m, m + BUDGET_SUFFIX) for m in methods if m + BUDGET_SUFFIX in methods)


def time_axes(ax: plt.Axes, title: str, first_column: bool, last_row: bool) -> None:
    """A time panel's axes: calibration seconds on a log scale with ``TIME_TICKS``, the title,
    the y label on the first column and the x label on the last row."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(TIME_TICKS))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(t) for t in TIME_TICKS]))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    if first_column:
        ax.set_ylabel("top-1 %", fontsize=8)
    if last_row:
        ax.set_xlabel("calibration s (log)", fontsize=8)


def time_vs_accuracy(rows: list[dict], path: Path, colours: dict[str, tuple]) -> None:
    """Calibration wall time against top-1, one panel per (model, setting): a point per
    method (mean, the seeds' standard deviation as its bar), a line from a recipe's 2k row to
    its 20k row, round-to-nearest as a dotted level."""
    panels = time_panels(rows)
    models = sorted({m for m, _ in panels}, key=lambda m: list(HEADLINE_MODELS).index(m)
                    if m in HEADLINE_MODELS else len(HEADLINE_MODELS))
    settings = [s for s in HEADLINE_SETTINGS if any(s == t for _, t in panels)]
    fig, axes = plt.subplots(len(models), len(settings), figsize=(3.2 * len(settings) + 2.2,
                             3.0 * len(models)), squeeze=False, sharex=True)
    drawn: set[str] = set()
    for i, model in enumerate(models):
        for j, setting in enumerate(settings):
            ax = axes[i][j]
            cells = {r["method"]: r for r in panels.get((model, setting), [])}
            nearest = cells.pop("nearest", None)
            setting_title = setting
            for low, high in budget_pairs(set(cells)):
                ax.plot([cells[low]["calib_seconds"], cells[high]["calib_seconds"]],
                        [cells[low]["top1"], cells[high]["top1"]], color=colours[low],
                        linewidth=1, zorder=1)
            for method, r in sorted(cells.items()):
                ax.errorbar(r["calib_seconds"], r["top1"], yerr=r.get("top1_std") or 0.0,
                            fmt="o", markersize=4, capsize=2, color=colours[method], zorder=2)
                drawn.add(method)
            if cells:
                ax.set_ylim(*time_panel_limits(list(cells.values())))
            if nearest is not None:  # a level inside the panel's range, else said in the title
                low, high = ax.get_ylim()
                if low <= nearest["top1"] <= high:
                    ax.axhline(nearest["top1"], color="grey", linestyle=":", linewidth=1)
                    drawn.add("nearest")
                else:
                    setting_title = f"{setting} (nearest {nearest['top1']:.1f}, off the panel)"
            time_axes(ax, f"{HEADLINE_MODELS.get(model, model)} {setting_title}",
                      first_column=j == 0, last_row=i == len(models) - 1)
    handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="", label=m)
               for m in sorted(drawn - {"nearest"})]
    if "nearest" in drawn:
        handles.append(plt.Line2D([], [], color="grey", linestyle=":", label="nearest"))
    handles.append(plt.Line2D([], [], color="black", linewidth=1, label="2k -> 20k, one recipe"))
    fig.legend(handles=handles, fontsize=7, loc="center right")
    fig.suptitle("calibration time against top-1 (Fashion-MNIST test, 2-core CPU; mean and "
                 "standard deviation over the seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (3.2 * len(settings) + 2.2), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def size_vs_accuracy(rows: list[dict], path: Path) -> bool:
    """Top-1 against model size for Attention Round at A4, one panel per model: uniform W<b>A4
    as a line, the mixed allocations as labelled points (the paper's table 4); False: no model
    with mixed rows."""
    rows = [r for r in rows if r["method"] == "attention"
            and (r["setting"].startswith("MP") or r["setting"] in SINGLE_A4)]
    models = sorted({r["model"] for r in rows if r["setting"].startswith("MP")})
    if not models:
        return False
    mixed = sorted({r["setting"] for r in rows if r["setting"].startswith("MP")})
    colour = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(mixed)}  # same in each panel
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        single = sorted((r for r in mine if r["setting"] in SINGLE_A4), key=lambda r: r["size_mb"])
        ax.errorbar([r["size_mb"] for r in single], [r["top1"] for r in single],
                    yerr=[r["top1_std"] for r in single], marker="o", capsize=3, color="grey",
                    label="uniform W3/W4/W5, A4")
        for r in single:
            ax.annotate(r["setting"], (r["size_mb"], r["top1"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="grey")
        for r in (r for r in mine if r["setting"].startswith("MP")):
            ax.errorbar([r["size_mb"]], [r["top1"]], yerr=[r["top1_std"]], marker="s",
                        capsize=3, linestyle="none", color=colour[r["setting"]],
                        label=r["setting"])
        ax.set(xlabel="size of the quantized layers, MB", ylabel="top-1 %",
               title=f"{model}: mixed precision against uniform bits (A4)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def table_result(path: Path) -> dict:
    """A suite's JSON checked for what the tables print: its command and rows, each row with
    every column (a file written by an older ``accuracy.py`` stops with its name and the keys
    it lacks, instead of a KeyError half-way through a page)."""
    result = read_result(path)
    fix = "re-run its suite (benchmarks/accuracy.py)"
    if "command" not in result or not result["rows"]:
        raise SystemExit(f"{path}: holds no command or no rows; {fix}")
    for i, r in enumerate(result["rows"]):
        missing = missing_columns(r) + [k for k in ("machine", "float_top1") if k not in r]
        if missing:
            raise SystemExit(f"{path}: row {i} ({r.get('model')} {r.get('setting')} "
                             f"{r.get('method')}) has no {', '.join(missing)}: written by an "
                             f"older benchmarks/accuracy.py; {fix}")
    return result


def suite_table(path: Path) -> str:
    """The markdown table of one suite's JSON, headed by the command that produced it."""
    result = table_result(path)
    machines = "; ".join(sorted({r["machine"] for r in result["rows"]}))
    out = [f"`{result['command']}` ({path.name}; {machines}):\n", HEADER]
    out += [row_line(r) for r in result["rows"]]
    return "\n".join(out)


def markdown_tables() -> str:
    """One table per suite file, in docs/benchmarks.md's format."""
    return "\n\n".join(suite_table(p) for p in sorted(RESULTS.glob("accuracy_*.json"))) + "\n"


TABLE_MARK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


def update_doc(doc: Path) -> list[str]:
    """Rewrite every ``<!-- table: accuracy_X.json -->`` ... ``<!-- /table -->`` block of
    ``doc`` with that JSON's table (``<!-- table: goal -->``: ``goal_table``, see
    ``GENERATED``); the text around the blocks is left as it is. Returns the names written.
    A block naming a JSON that does not exist raises FileNotFoundError, and a JSON that
    cannot make its table (unreadable, no rows, rows without a column the
    table needs) stops with a message naming it, in both cases before anything is written."""
    text = doc.read_text()
    names = [m.group(2) for m in TABLE_MARK.finditer(text)]
    missing = [n for n in names if n not in GENERATED and not (RESULTS / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{doc} names tables with no JSON in {RESULTS}: {missing}")
    tables = {n: block_table(n) for n in names}  # every table made before writing

    def table(m: re.Match) -> str:
        return f"{m.group(1)}{tables[m.group(2)]}\n{m.group(4)}"

    new = TABLE_MARK.sub(table, text)
    if new != text:
        doc.write_text(new)
    return names


def stale_tables(doc: Path) -> list[str]:
    """The JSON names of ``doc``'s table blocks whose text is not what ``update_doc`` would
    write now (nothing is written)."""
    text = doc.read_text()
    return [m.group(2) for m in TABLE_MARK.finditer(text)
            if m.group(3) != block_table(m.group(2)) + "\n"]


def block_table(name: str) -> str:
    """The table of a ``<!-- table: NAME -->`` block: a suite's JSON, or one of
    ``GENERATED`` (tables computed from several suites)."""
    return GENERATED[name]().rstrip("\n") if name in GENERATED else suite_table(RESULTS / name)


# README's headline table: both embedded models (HEADLINE_MODELS), the recipes the benchmarks
# compare, the settings with quantized activations (HEADLINE_SETTINGS; both from table_names.py);
# only rows with HEADLINE_SEEDS seeds or more
HEADLINE_RECIPES = {"nearest": "round-to-nearest", "adaround": "AdaRound",
                    "attention": "Attention Round, paper",
                    "attnround": "attnround (default)",
                    "attnround_v2": "attnround v2 (until 2026-12-04)",
                    "brecq": "BRECQ's recipe",
                    "qdrop": "QDrop's recipe",
                    # the peers' recipes as the tables before issue 34 ran them (see
                    # benchmarks/accuracy.py): shown until the like-for-like rows have 3 seeds
                    "brecq_v1": "BRECQ's recipe, v1", "qdrop_v1": "QDrop's recipe, v1"}
HEADLINE_SEEDS = 3
# read first, in this order: the recipes suite (the default recipe and the paper's setting in one
# sitting on the current code), then the models' own tables
HEADLINE_SUITES = ("accuracy_recipes.json", "accuracy_main.json", "accuracy_mobilenetv2.json")


def headline_rows() -> dict[tuple[str, str, str], tuple[dict, str]]:
    """(model, setting, recipe) -> (row, JSON name) for the headline's cells that have a row
    with at least ``HEADLINE_SEEDS`` seeds in some suite: ``HEADLINE_SUITES`` first, in their
    order, then the other files in name order. ``UNPLOTTED_SUITES`` are left out: their rows use
    the peers' activation placement, every headline row ours, and a cell would compare across
    placements."""
    cells: dict[tuple[str, str, str], tuple[dict, str]] = {}
    for path in result_paths():
        if path.name in UNPLOTTED_SUITES:
            continue
        for r in table_result(path)["rows"]:
            key = (r["model"], r["setting"], r["method"])
            if (r["model"] in HEADLINE_MODELS and r["setting"] in HEADLINE_SETTINGS
                    and r["method"] in HEADLINE_RECIPES and len(r["seeds"]) >= HEADLINE_SEEDS
                    and key not in cells):
                cells[key] = (r, path.name)
    return cells


# issue 34's goal, per setting: the default recipe against the best row of the 20k-iteration
# peer recipes (with HEADLINE_SEEDS seeds), reached when its top-1 is at least the peer's less
# the larger of the two spreads, in at most GOAL_TIME_SHARE of the peer's wall time
GOAL_RECIPE = "attnround"
GOAL_PEERS = ("brecq", "qdrop", "brecq_v1", "qdrop_v1")
GOAL_TIME_SHARE = 0.25


# the goal on one host: runs kept as accuracy_<suite>_<date>_timing.json, the best peer row and
# the default at a setting, one after the other in one sitting (seed 0 each, or more seeds); the
# table rows' minutes come from sittings on different days and hosts, and one seed's top-1
# moves by up to 0.4 pp between CPU models
TIMING_RUN = re.compile(r"^accuracy_\w+?_(\d{4}-\d{2}-\d{2})_timing\.json$")


class OneHost(NamedTuple):
    """The default and a peer from one timing sitting: its date, the seeds both ran, the peer's
    mean calibration seconds over ours, and where both ran ``HEADLINE_SEEDS`` seeds or more the
    top-1 gap (ours - theirs, pp) and the larger of the two spreads (else None)."""

    date: str
    seeds: list[int]
    ratio: float
    gap: float | None
    spread: float | None

    def cell(self) -> str:
        """"9.8x (seed 0, 2026-12-05)", or with the gap "-0.02 pp, 11.8x (seeds 0-2, ...)"."""
        first, last = self.seeds[0], self.seeds[-1]
        seeds = (f"seed {first}" if len(self.seeds) == 1
                 else f"seeds {first}-{last}" if self.seeds == list(range(first, last + 1))
                 else f"seeds {', '.join(map(str, self.seeds))}")
        gap = "" if self.gap is None else f"{self.gap:+.2f} pp, "
        return f"{gap}{self.ratio:.1f}x ({seeds}, {self.date})"


def timing_rows() -> dict[tuple[str, str, str], tuple[dict, str]]:
    """(model, setting, method) -> (row, date) of the ``TIMING_RUN`` files, the latest date
    where several dates hold it."""
    rows: dict[tuple[str, str, str], tuple[dict, str]] = {}
    runs = sorted((match.group(1), path) for path in RESULTS.glob("accuracy_*_timing.json")
                  if (match := TIMING_RUN.match(path.name)))
    for date, path in runs:
        for r in table_result(path)["rows"]:
            seeds = r.get("per_seed", {})
            if not seeds or any("cpu" not in s for s in seeds.values()):
                raise SystemExit(f"{path}: row {r['model']} {r['setting']} {r['method']} has "
                                 "no per-seed runs with their cpu: a timing run names its host")
            rows[r["model"], r["setting"], r["method"]] = (r, date)
    return rows


def seed_gaps(ours: dict, theirs: dict) -> tuple[list[str], list[float], float]:
    """The seeds both rows ran, ours - theirs top-1 seed by seed (pp), and the larger of the
    two rows' spreads over those seeds."""
    a, b = ours["per_seed"], theirs["per_seed"]
    seeds = sorted(set(a) & set(b), key=int)
    top_a, top_b = [a[s]["quant_top1"] for s in seeds], [b[s]["quant_top1"] for s in seeds]
    spread = max(statistics.pstdev(top_a), statistics.pstdev(top_b)) if seeds else 0.0
    return seeds, [x - y for x, y in zip(top_a, top_b, strict=True)], spread


def one_host(model: str, setting: str, peer: str,
             timing: dict[tuple[str, str, str], tuple[dict, str]]) -> OneHost | None:
    """The default against ``peer`` over the seeds both ran in one timing sitting (the same
    date, every run on the same CPU); None where the timing runs lack either or ran apart."""
    theirs, ours = timing.get((model, setting, peer)), timing.get((model, setting, GOAL_RECIPE))
    if theirs is None or ours is None or theirs[1] != ours[1]:
        return None
    a, b = theirs[0]["per_seed"], ours[0]["per_seed"]
    seeds = sorted(set(a) & set(b), key=int)
    if not seeds or len({run["cpu"] for s in seeds for run in (a[s], b[s])}) != 1:
        return None
    ratio = (statistics.mean(a[s]["calib_seconds"] for s in seeds)
             / statistics.mean(b[s]["calib_seconds"] for s in seeds))
    gap = spread = None
    if len(seeds) >= HEADLINE_SEEDS:
        _, gaps, spread = seed_gaps(ours[0], theirs[0])
        gap = statistics.mean(gaps)
    return OneHost(theirs[1], [int(s) for s in seeds], ratio, gap, spread)


def goal_cells(ours: dict, best: dict) -> str:
    """The goal tables' first two cells after the setting: the default's and the best peer
    row's top-1 (mean ± spread) and minutes."""
    return (f"| {ours['top1']:.2f} ± {ours['top1_std']:.2f} "
            f"({minutes(ours['calib_seconds'])} min) "
            f"| {HEADLINE_RECIPES[best['method']]}: {best['top1']:.2f} ± "
            f"{best['top1_std']:.2f} ({minutes(best['calib_seconds'])} min) ")


def goal_verdict(level: bool, gap: float, ratio: float) -> str:
    """"reached", or what misses the goal in bold: the top-1 (``level`` false, ``gap`` pp
    behind) and the time (less than ``1 / GOAL_TIME_SHARE`` times faster)."""
    misses = [] if level else [f"behind by {-gap:.2f} pp"]
    if ratio < 1 / GOAL_TIME_SHARE:
        misses.append(f"only {ratio:.1f}x faster")
    return "reached" if not misses else "**" + "; ".join(misses) + "**"


def goal_table() -> str:
    """Issue 34's goal per model and setting, from the headline's cells: the default's top-1
    and minutes, the best 20k peer row's, the gap (ours - theirs, pp), the peer's minutes over
    ours as the rows' sittings measured them, the same from a timing run on one host
    (``one_host``) and whether the goal is reached (``GOAL_*``); where a timing run has the
    pair, its ratio decides the time bound, and with 3 seeds its gap decides the top-1 (the
    verdict then says what the rows across hosts say where that differs); "-" where either
    row is missing."""
    cells = headline_rows()
    timing = timing_rows()
    out = ["| model, setting | default (`attnround`) | best 20k-iteration peer row | gap, pp "
           "| peer's minutes / ours | on one host: gap, peer's time / ours | goal |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for model, model_name in HEADLINE_MODELS.items():
        for setting in HEADLINE_SETTINGS:
            ours = cells.get((model, setting, GOAL_RECIPE))
            peers = [cells[model, setting, p][0] for p in GOAL_PEERS
                     if (model, setting, p) in cells]
            if ours is None or not peers:
                out.append(f"| {model_name} {setting} | - | - | - | - | - | - |")
                continue
            ours = ours[0]
            best = max(peers, key=lambda r: r["top1"])
            gap = ours["top1"] - best["top1"]
            ratio = best["calib_seconds"] / ours["calib_seconds"]
            across = gap >= -max(ours["top1_std"], best["top1_std"])
            host = one_host(model, setting, best["method"], timing)
            judged_ratio, judged_gap, level = ratio, gap, across
            if host is not None:
                judged_ratio = host.ratio
                if host.gap is not None:
                    judged_gap, level = host.gap, host.gap >= -host.spread
            verdict = goal_verdict(level, judged_gap, judged_ratio)
            if level != across:
                verdict += (" on one host (across hosts: "
                            + ("level" if across else f"behind by {-gap:.2f} pp") + ")")
            out.append(
                f"| {model_name} {setting} {goal_cells(ours, best)}"
                f"| {gap:+.2f} | {ratio:.0f}x | {'-' if host is None else host.cell()} "
                f"| {verdict} |")
    return "\n".join(out) + "\n"


# issue 34's goal in the peers' placement and order: the like-for-like suite's default
# (ours with their placement) against the best of the peers' own recipes there (the suite's
# file is table_names.LIKE_FOR_LIKE)
LIKE_FOR_LIKE_RECIPE = "attnround_blocks"
LIKE_FOR_LIKE_PEERS = ("brecq", "qdrop")


def one_cpu_ratio(ours: dict, theirs: dict) -> tuple[float, list[str]] | None:
    """The peer's mean calibration seconds over ours on the seeds whose two runs name the same
    CPU, and those seeds; None where no seed's two runs do."""
    a, b = ours["per_seed"], theirs["per_seed"]
    seeds = [s for s in sorted(set(a) & set(b), key=int)
             if a[s].get("cpu") is not None and a[s].get("cpu") == b[s].get("cpu")]
    if not seeds:
        return None
    return (statistics.mean(b[s]["calib_seconds"] for s in seeds)
            / statistics.mean(a[s]["calib_seconds"] for s in seeds)), seeds


def like_for_like_goal_table() -> str:
    """Issue 34's goal in the peers' placement and order, from the like-for-like suite: the
    default there (``LIKE_FOR_LIKE_RECIPE``) against the best of the peers' own recipes
    (``LIKE_FOR_LIKE_PEERS``) with ``HEADLINE_SEEDS`` seeds, over the seeds both ran: the gap
    (ours - theirs, pp) and seed by seed, the peer's calibration seconds over ours on the seeds
    whose two runs name one CPU (across CPUs, marked so, where none does), and the verdict by
    the goal's rule (``GOAL_*``). Peer rows with fewer seeds are listed, not judged; "-" where
    the default or every peer row with enough seeds is missing, or they share no seed."""
    rows = {(r["model"], r["setting"], r["method"]): r
            for r in table_result(RESULTS / LIKE_FOR_LIKE)["rows"]}
    out = ["| model, setting | default (`attnround_blocks`) | best peer recipe | gap, pp (by "
           "seed) | peer's time / ours | peer rows with fewer seeds | goal |",
           "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for model, model_name in HEADLINE_MODELS.items():
        for setting in HEADLINE_SETTINGS:
            ours = rows.get((model, setting, LIKE_FOR_LIKE_RECIPE))
            peers = [rows[model, setting, p] for p in LIKE_FOR_LIKE_PEERS
                     if (model, setting, p) in rows]
            judged = [r for r in peers if len(r["seeds"]) >= HEADLINE_SEEDS]
            fewer = ", ".join(f"{HEADLINE_RECIPES[r['method']]}: {r['top1']:.2f} (seed"
                              f"{'s' if len(r['seeds']) > 1 else ''} "
                              f"{', '.join(map(str, r['seeds']))})"
                              for r in peers if r not in judged) or "-"
            best = max(judged, key=lambda r: r["top1"]) if judged else None
            seeds, gaps, spread = ([], [], 0.0) if (
                ours is None or len(ours["seeds"]) < HEADLINE_SEEDS or best is None
            ) else seed_gaps(ours, best)
            if not seeds:  # a row missing, or no seed in common: no gap to judge
                out.append(f"| {model_name} {setting} | - | - | - | - | {fewer} | - |")
                continue
            gap = statistics.mean(gaps)
            timed = one_cpu_ratio(ours, best)
            if timed is None:
                ratio = best["calib_seconds"] / ours["calib_seconds"]
                time_cell = f"{ratio:.1f}x (across CPUs)"
            else:
                ratio, on_one = timed
                time_cell = f"{ratio:.1f}x" + ("" if on_one == seeds else
                                               f" (seeds {', '.join(on_one)})")
            out.append(
                f"| {model_name} {setting} {goal_cells(ours, best)}"
                f"| {gap:+.2f} ({', '.join(f'{g:+.2f}' for g in gaps)}) | {time_cell} "
                f"| {fewer} | {goal_verdict(gap >= -spread, gap, ratio)} |")
    return "\n".join(out) + "\n"


def like_for_like_rows(path: Path | None = None) -> list[dict]:
    """The rows the goal in the peers' placement compares (``like_for_like_goal_table``): the
    default there and the peers' own recipes, each with ``HEADLINE_SEEDS`` seeds or more, from
    ``path`` (default: the like-for-like suite's JSON; none where it does not exist)."""
    path = RESULTS / LIKE_FOR_LIKE if path is None else path
    if not path.is_file():
        return []
    methods = (LIKE_FOR_LIKE_RECIPE, *LIKE_FOR_LIKE_PEERS)
    return [r for r in table_result(path)["rows"]
            if r["method"] in methods and len(r["seeds"]) >= HEADLINE_SEEDS]


class GoalRegion(NamedTuple):
    """Where the default reaches the goal at one setting: a top-1 of at least ``top1`` (the
    best peer row's ``peer_top1`` less the larger of the two rows' spreads) in at most
    ``seconds`` (``GOAL_TIME_SHARE`` of that row's calibration seconds)."""

    peer: str
    peer_top1: float
    top1: float
    seconds: float


def goal_region(cells: dict[str, dict]) -> GoalRegion | None:
    """The goal's region at one (model, setting) from its like-for-like rows by method; None
    where the default's row or every peer row is missing."""
    ours = cells.get(LIKE_FOR_LIKE_RECIPE)
    peers = [cells[p] for p in LIKE_FOR_LIKE_PEERS if p in cells]
    if ours is None or not peers:
        return None
    best = max(peers, key=lambda r: r["top1"])
    spread = max(ours["top1_std"], best["top1_std"])
    return GoalRegion(best["method"], best["top1"], best["top1"] - spread,
                      GOAL_TIME_SHARE * best["calib_seconds"])


def goal_bottom(rows: list[dict], model: str) -> float:
    """The goal's accuracy plot's bottom edge for ``model``: 1 pp under the lowest top-1 of the
    default and the best peer row at any setting, so both are drawn at every setting (a
    collapsed recipe's row sits on the edge)."""
    by_setting = defaultdict(dict)
    for r in rows:
        if r["model"] == model:
            by_setting[r["setting"]][r["method"]] = r
    lows = [min(cells[LIKE_FOR_LIKE_RECIPE]["top1"], region.peer_top1)
            for cells in by_setting.values() if (region := goal_region(cells)) is not None]
    return min(lows or [r["top1"] for r in rows if r["model"] == model]) - 1.0


def in_goal_panel(cells: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """A goal panel's rows by method split into those drawn and the rest, more than
    ``ZOOM_DROP`` pp below the panel's best (a collapsed recipe would squash the others), as
    "method top-1" for the panel's title."""
    top = max((r["top1"] for r in cells.values()), default=0.0)
    shown = {m: r for m, r in cells.items() if r["top1"] >= top - ZOOM_DROP}
    return shown, [f"{m} {r['top1']:.1f}" for m, r in sorted(cells.items()) if m not in shown]


def goal_time_vs_accuracy(rows: list[dict], path: Path, colours: dict[str, tuple]) -> bool:
    """Issue 34's goal in the peers' placement and order, from ``like_for_like_rows``:
    calibration time against top-1, one panel per (model, setting), a point per recipe (mean,
    the seeds' spread as its bar), the best peer recipe's top-1 as a dashed level and where
    the goal is reached shaded (``goal_region``); a row more than ``ZOOM_DROP`` pp below the
    panel's best is named in its title instead of drawn. False: no rows."""
    panels: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r["model"] in HEADLINE_MODELS and r["setting"] in HEADLINE_SETTINGS:
            panels[r["model"], r["setting"]][r["method"]] = r
    if not panels:
        return False
    models = [m for m in HEADLINE_MODELS if any(m == k for k, _ in panels)]
    settings = [s for s in HEADLINE_SETTINGS if any(s == t for _, t in panels)]
    seconds = [r["calib_seconds"] for cells in panels.values() for r in cells.values()]
    left, right = min(seconds) / 1.6, max(seconds) * 1.6
    fig, axes = plt.subplots(len(models), len(settings), figsize=(3.2 * len(settings) + 2.2,
                             3.0 * len(models)), squeeze=False, sharex=True)
    for i, model in enumerate(models):
        for j, setting in enumerate(settings):
            ax = axes[i][j]
            cells = panels.get((model, setting), {})
            shown, off = in_goal_panel(cells)
            for method, r in sorted(shown.items()):
                ax.errorbar(r["calib_seconds"], r["top1"], yerr=r["top1_std"], fmt="o",
                            markersize=4, capsize=2, color=colours[method], zorder=2)
            ax.set_xlim(left, right)
            region = goal_region(cells)
            if shown:
                low, high = time_panel_limits(list(shown.values()))
                if region is not None:
                    low = min(low, region.top1 - 0.1)
                ax.set_ylim(low, high)
            if region is not None:
                ax.fill_between([left, region.seconds], region.top1, ax.get_ylim()[1],
                                color="tab:green", alpha=0.15, linewidth=0, zorder=0)
                ax.axhline(region.peer_top1, color="grey", linestyle="--", linewidth=1,
                           zorder=1)
            title = f"{HEADLINE_MODELS[model]} {setting}"
            time_axes(ax, title + (f" ({', '.join(off)}, off the panel)" if off else ""),
                      first_column=j == 0, last_row=i == len(models) - 1)
    methods = sorted({m for cells in panels.values() for m in cells})
    handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="", label=m)
               for m in methods]
    handles += [plt.Line2D([], [], color="grey", linestyle="--", linewidth=1,
                           label="best peer recipe's top-1"),
                matplotlib.patches.Patch(color="tab:green", alpha=0.15,
                                         label="the goal: within the larger spread\nof it, "
                                               f"in {GOAL_TIME_SHARE:.0%} of its time")]
    fig.legend(handles=handles, fontsize=7, loc="center right")
    fig.suptitle("issue 34's goal in the peers' placement and order: calibration time against "
                 "top-1 (Fashion-MNIST test, 2-core CPU; mean and spread over the seeds)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (3.2 * len(settings) + 2.2), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def goal_plots(rows: list[dict]) -> list[Path]:
    """The goal's plots from ``like_for_like_rows``: top-1 by setting per model
    (``goal_accuracy_<model>.png``) and ``goal_time_vs_accuracy.png``; the paths written.
    Three recipes, so tab10's first colours, which ``method_colours``' paired shades are not."""
    colours = {m: plt.get_cmap("tab10")(i)
               for i, m in enumerate(sorted({r["method"] for r in rows}))}
    written = []
    for model in sorted({r["model"] for r in rows}):
        path = RESULTS / f"goal_accuracy_{model}.png"
        accuracy_by_setting(rows, model, path, colours,
                            "the goal's recipes in the peers' placement and order",
                            bottom=goal_bottom(rows, model))
        written.append(path)
    if goal_time_vs_accuracy(rows, RESULTS / "goal_time_vs_accuracy.png", colours):
        written.append(RESULTS / "goal_time_vs_accuracy.png")
    return written


# table blocks computed from several files (name -> function), beside the suites' own: the goal
# from the accuracy suites and in the peers' placement, every lever from benchmarks/levers.py's
# files (lever_table.py), every pair paired.py compared image by image (paired_table.py)
GENERATED = {"goal": goal_table, "goal_like_for_like": like_for_like_goal_table,
             "levers": lever_table, "paired": paired_table}


def minutes(seconds: float) -> str:
    """A calibration time in minutes, one decimal ("< 0.1" below 6 s)."""
    return "< 0.1" if seconds < 6 else f"{seconds / 60:.1f}"


def headline_table() -> str:
    """README's headline block: top-1 (mean ± spread over the seeds) and calibration minutes
    for every model x recipe x setting, "-" where no row has enough seeds, then where the
    numbers come from (the JSON files, their commands and machines) and which cells are "-"."""
    cells = headline_rows()
    settings = " | ".join(HEADLINE_SETTINGS)
    out = [f"| model (float top-1 %) | recipe | {settings} |",
           "| --- | --- |" + " ---: |" * len(HEADLINE_SETTINGS)]
    empty, absent = [], []
    for model, model_name in HEADLINE_MODELS.items():
        floats = {r["float_top1"] for (m, _, _), (r, _) in cells.items() if m == model}
        float_top1 = " / ".join(f"{f:.2f}" for f in sorted(floats)) or "-"
        for method, recipe in HEADLINE_RECIPES.items():
            if not any((model, s, method) in cells for s in HEADLINE_SETTINGS):
                absent.append(f"{recipe} on {model_name}")  # a row of dashes says nothing
                continue
            line = [f"{model_name} ({float_top1})", recipe]
            for setting in HEADLINE_SETTINGS:
                if (model, setting, method) not in cells:
                    line.append("-")
                    empty.append(f"{model} {setting} {method}")
                    continue
                r = cells[model, setting, method][0]
                line.append(f"{r['top1']:.2f} ± {r['top1_std']:.2f} "
                            f"({minutes(r['calib_seconds'])} min)")
            out.append("| " + " | ".join(line) + " |")
    sources = sorted({name for _, name in cells.values()})
    commands = [f"`{table_result(RESULTS / n)['command']}`" for n in sources]
    machines = sorted({r["machine"] for r, _ in cells.values()})
    seeds = sorted({len(r["seeds"]) for r, _ in cells.values()})
    out += ["", "Top-1 % on the 10k Fashion-MNIST test images, mean ± spread (population "
            "standard deviation)",
            f"over {'-'.join(map(str, seeds)) or HEADLINE_SEEDS} seeds, and the calibration's "
            "wall time in minutes (mean over the seeds).",
            f"From {', '.join(f'`benchmarks/results/{n}`' for n in sources) or 'no JSON'}",
            f"({', '.join(commands) or 'no command'}).",
            f"Machine (the JSON's `machine`): {'; '.join(machines) or '-'}."]
    if empty:
        out += ["", f"`-`: no row with {HEADLINE_SEEDS} seeds in the JSON "
                f"({', '.join(empty)})."]
    else:
        out += [f"Every cell has a row with {HEADLINE_SEEDS} seeds (a cell without one would "
                "show `-`)."]
    if absent:
        out += ["", f"Not in the table, no row with {HEADLINE_SEEDS} seeds in our activation "
                f"placement at any of its settings yet: {', '.join(absent)} (their rows in "
                "the peers' placement: docs/benchmarks.md, the like-for-like goal table)."]
    out += ["", "The goal (issue 34): the default at least level with the best 20k-iteration "
            "peer row (within the larger spread) in at most a quarter of its minutes; the "
            "minutes as each row's sitting measured them; where a timing run on one host in "
            "one sitting has the pair, its ratio decides the time bound, and with 3 seeds "
            "each its gap decides the top-1:",
            "", goal_table().rstrip("\n")]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC,
                        help="the page whose table blocks are rewritten (default: %(default)s)")
    parser.add_argument("--headline", action="store_true",
                        help="print README's headline block and stop (nothing is written)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if --doc's tables are not what the JSON gives (no writing)")
    args = parser.parse_args()
    if args.headline:
        print(headline_table(), end="")
        return
    if args.check:
        stale = stale_tables(args.doc)
        if stale:
            raise SystemExit(f"{args.doc}: stale tables {stale}; run benchmarks/plots.py")
        print(f"{args.doc}: every table is the JSON's")
        return
    print(markdown_tables())
    print(f"{args.doc}: tables from {', '.join(update_doc(args.doc))}")
    rows = load_rows()
    colours = method_colours(rows)
    for model in sorted({r["model"] for r in rows}):
        accuracy_by_setting(rows, model, RESULTS / f"accuracy_{model}.png", colours)
    tau_sweep(sweep_rows(rows), RESULTS / "tau_sweep.png")
    time_vs_accuracy(rows, RESULTS / "time_vs_accuracy.png", colours)
    size_vs_accuracy(rows, RESULTS / "size_vs_accuracy.png")
    goal_plots(like_for_like_rows())
    print(f"{len(rows)} rows -> {sorted(p.name for p in RESULTS.glob('*.png'))}")


if __name__ == "__main__":
    main()
