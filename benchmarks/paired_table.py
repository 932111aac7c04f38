"""Every pair of recipes compared image by image on the test set, in one table: what
``benchmarks/paired.py --json`` wrote to ``paired_<model>_<setting>.json`` in
``results/goal_paired_<sitting>/`` (a folder a sitting, one host a sitting), a row per model and
setting, beside the change the
like-for-like suite's rows give over the same seeds (``accuracy_like_for_like.json``, another
host).

Where two sittings paired one setting, the row is the file with more pairs (the later sitting
among equals). A row's recipes are read from its run folders' names
(``<model>_<setting>_<method>_s<seed>``), *before* first.

    .venv/bin/python benchmarks/paired_table.py      # the table, printed
    .venv/bin/python benchmarks/plots.py             # ... also written to docs/benchmarks.md
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import NamedTuple

from result_json import read_json, read_result, restore_fix
from table_names import LIKE_FOR_LIKE, MODEL_NAMES, Z95
from table_names import SETTINGS as SETTING_ORDER

RESULTS = Path(__file__).resolve().parent / "results"
SITTINGS = "goal_paired_*"
PAIRED_FILE = re.compile(r"^paired_(?P<model>[a-z0-9]+)_(?P<setting>W\d+A\d+)\.json$")


class PairedRow(NamedTuple):
    """One paired.py result: ``before`` and ``after`` recipes over ``seeds``."""

    model: str
    setting: str
    sitting: str
    before: str
    after: str
    seeds: list[int]
    top1_before: list[float]
    top1_after: list[float]
    pooled: float
    pooled_se: float
    pairs_se: float | None

    @property
    def changes(self) -> list[float]:
        return [a - b for a, b in zip(self.top1_after, self.top1_before, strict=True)]


def run_method(run: str, model: str, setting: str, path: Path) -> tuple[str, int]:
    """The method and seed of a run folder ``run`` of ``model`` at ``setting``."""
    name = Path(run).name
    match = re.fullmatch(rf"{model}_{setting}_(\w+)_s(\d+)", name)
    if match is None:
        raise SystemExit(f"{path}: run {name!r} is not a {model} {setting} run named "
                         f"<model>_<setting>_<method>_s<seed>; {restore_fix(path)}")
    return match.group(1), int(match.group(2))


def paired_row(path: Path) -> PairedRow:
    """The row of one ``paired_<model>_<setting>.json``; a file that is not one stops with a
    message naming it."""
    name = PAIRED_FILE.fullmatch(path.name)
    if name is None:
        raise SystemExit(f"{path}: not named paired_<model>_<setting>.json")
    model, setting = name["model"], name["setting"]
    data = read_json(path, restore_fix(path))
    pairs = data.get("pairs")
    if not pairs or data.get("pooled_change") is None:
        raise SystemExit(f"{path}: no pairs pooled over the same images; {restore_fix(path)}")
    befores = [run_method(p["before"], model, setting, path) for p in pairs]
    afters = [run_method(p["after"], model, setting, path) for p in pairs]
    if len({m for m, _ in befores}) > 1 or len({m for m, _ in afters}) > 1 or any(
            b[1] != a[1] for b, a in zip(befores, afters, strict=True)):
        raise SystemExit(f"{path}: its pairs are not one recipe before and one after, seed "
                         "with seed")
    return PairedRow(model, setting, path.parent.name.removeprefix("goal_paired_"),
                     befores[0][0], afters[0][0], [s for _, s in befores],
                     [p["top1_before"] for p in pairs], [p["top1_after"] for p in pairs],
                     data["pooled_change"], data["pooled_se"], data.get("pairs_se"))


def paired_rows(results: Path = RESULTS) -> list[PairedRow]:
    """A row per model and setting (the file with most pairs, the later sitting among equals),
    ResNet-20 first, then by setting."""
    rows: dict[tuple[str, str], PairedRow] = {}
    for path in sorted(results.glob(f"{SITTINGS}/paired_*.json")):
        row = paired_row(path)
        key = (row.model, row.setting)
        if key not in rows or len(row.seeds) >= len(rows[key].seeds):
            rows[key] = row
    order = {m: i for i, m in enumerate(MODEL_NAMES)}
    return sorted(rows.values(), key=lambda r: (
        order.get(r.model, len(order)), r.model,
        SETTING_ORDER.index(r.setting) if r.setting in SETTING_ORDER else len(SETTING_ORDER),
        r.setting))


def suite_rows(results: Path = RESULTS) -> dict[tuple[str, str, str], dict]:
    """The like-for-like suite's rows by (model, setting, method); none where it has no JSON."""
    path = results / LIKE_FOR_LIKE
    if not path.is_file():
        return {}
    return {(r["model"], r["setting"], r["method"]): r for r in read_result(path)["rows"]}


def suite_tops(row: PairedRow, suite: dict[tuple[str, str, str], dict]
               ) -> tuple[list[float], list[float]] | None:
    """The like-for-like suite's top-1 of the row's two recipes (``suite_rows``), before and
    after, at the row's seeds in its order; None where the suite lacks a recipe or a seed."""
    before = suite.get((row.model, row.setting, row.before), {}).get("per_seed", {})
    after = suite.get((row.model, row.setting, row.after), {}).get("per_seed", {})
    seeds = [str(s) for s in row.seeds]
    if not all(s in before and s in after for s in seeds):
        return None
    return ([before[s]["quant_top1"] for s in seeds], [after[s]["quant_top1"] for s in seeds])


def suite_change(row: PairedRow, suite: dict[tuple[str, str, str], dict]) -> str:
    """The change after - before that the like-for-like suite's rows (``suite_rows``) of the two
    recipes give over the row's seeds (mean, pp), "-" where the suite lacks a recipe or one of
    those seeds."""
    tops = suite_tops(row, suite)
    if tops is None:
        return "-"
    return f"{statistics.mean(a - b for b, a in zip(*tops, strict=True)):+.2f}"


def host_moves(row: PairedRow, suite: dict[tuple[str, str, str], dict]) -> str:
    """How far the row's runs moved from the suite's runs of the same recipe and seed (another
    host): the smallest and largest of (top-1 here - the suite's) over both recipes' runs, pp;
    "-" where the suite lacks a recipe or a seed."""
    tops = suite_tops(row, suite)
    if tops is None:
        return "-"
    moves = [here - there for heres, theres in zip((row.top1_before, row.top1_after), tops,
                                                   strict=True)
             for here, there in zip(heres, theres, strict=True)]
    return f"{min(moves):+.2f} to {max(moves):+.2f}"


def mean_spread(values: list[float]) -> str:
    """Mean ± population sd (the mean alone for one value), two decimals."""
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.pstdev(values):.2f}"


def paired_table(results: Path = RESULTS) -> str:
    """The markdown table of every paired setting."""
    out = ["| model, setting | sitting | seeds | before: recipe, top-1 % | after: recipe, top-1 % "
           "| change by seed, pp | pooled change ± SE over the images, pp (95 % interval) "
           "| SE over the pairs, pp | the suite's change, same seeds, pp "
           "| a run here - the suite's run, pp (smallest to largest) |",
           "| --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    suite = suite_rows(results)
    for row in paired_rows(results):
        low, high = row.pooled - Z95 * row.pooled_se, row.pooled + Z95 * row.pooled_se
        pairs_se = "-" if row.pairs_se is None else f"{row.pairs_se:.2f}"
        out.append(
            f"| {MODEL_NAMES.get(row.model, row.model)} {row.setting} | {row.sitting} | "
            f"{', '.join(map(str, row.seeds))} | `{row.before}` {mean_spread(row.top1_before)} "
            f"| `{row.after}` {mean_spread(row.top1_after)} "
            f"| {', '.join(f'{c:+.2f}' for c in row.changes)} "
            f"| **{row.pooled:+.2f}** ± {row.pooled_se:.2f} ({low:+.2f} to {high:+.2f}) "
            f"| {pairs_se} | {suite_change(row, suite)} | {host_moves(row, suite)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(paired_table(), end="")
