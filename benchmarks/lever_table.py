"""Every lever of issue 34 in one table: what ``benchmarks/levers.py`` measured on the validation
split, each variant against the recipe it was tried on, seed by seed, with the time it cost.

Each ``levers_<recipe>.json`` holds one recipe as it stood when its variants ran (the file is
renamed when the recipe changes: ``levers_attnround_v1.json`` is the default of 2026-12-02).
A variant's *before* is that file's own ``the recipe as it is`` row at the same model and
setting; where the file has none there, it is the row of the recipe's parent file that ran the
same options (``PARENTS``: e.g. the v2 recipe is the v1 recipe with ``unit_blocks 2,
join_end_layers``, a variant of ``levers_attnround_v1.json``), and the table names that file.
Those two rows can be from different days, so from code with a different float summation order
(docs/benchmarks.md says which); a change below 0.3-0.5 pp there is not a decision.
A variant in the peers' placement (its name starts with one of ``PLACEMENTS`` and a comma) is
measured against the file's row of that placement at the same model and setting, where there is
one, so that it shows what the lever did in that placement (the table names the placement row).

    .venv/bin/python benchmarks/lever_table.py          # the table, printed
    .venv/bin/python benchmarks/plots.py                # ... also written to docs/benchmarks.md
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import NamedTuple

RESULTS = Path(__file__).resolve().parent / "results"
BASE = "the recipe as it is"
# variants that put the recipe in the peers' placement (and order); a lever on top of one of them
# ("<placement>, <lever>") is compared with it, longest first
PLACEMENTS = ("act_placement blocks, block output steps", "act_placement blocks")
# a levers file -> (its recipe's parent file, the variant there that is this file's recipe),
# oldest first; the next recipe took that variant
PARENTS = {
    "levers_attnround_lr4e-4.json": ("levers_attention.json", "scale_search_p 2.4"),
    "levers_attnround_v1.json": ("levers_attnround_lr4e-4.json", "alpha lr 1e-3"),
    "levers_attnround_v2.json": ("levers_attnround_v1.json", "unit_blocks 2, join_end_layers"),
    "levers_attnround.json": ("levers_attnround_v2.json", "act_border aquant"),
}
# the recipe each file's "the recipe as it is" ran, in the names the accuracy tables use
RECIPES = {
    "levers_nearest.json": "nearest",
    "levers_attention.json": "attention (the paper's setting)",
    "levers_attnround_lr4e-4.json": "attention + p 2.4 (2026-12-02 morning)",
    "levers_attnround_v1.json": "attnround_v1 (the default of 2026-12-02)",
    "levers_attnround_v2.json": "attnround_v2 (the default of 2026-12-03)",
    "levers_attnround.json": "attnround (the default since 2026-12-04)",
    # a sitting of its own (levers.py --sitting): its base rows ran again beside its levers
    "levers_attnround_epyc.json": "attnround, on the AMD EPYC host (2026-12-06/07)",
    "levers_attnround_epyc2.json": "attnround, on the second AMD EPYC host (2026-12-08)",
}
HEADER = ("| recipe tried on | model | setting | lever | validation top-1 before | after | "
          "change, pp (per seed) | time after / before | became the next recipe |\n"
          "| --- | --- | --- | --- | ---: | ---: | --- | ---: | --- |")


class Lever(NamedTuple):
    """One variant against its recipe at one model and setting, on the seeds both ran."""

    file: str
    model: str
    setting: str
    variant: str
    seeds: list[int]
    before: list[float]
    after: list[float]
    base_file: str  # where ``before`` comes from: ``file`` or a parent (``PARENTS``)
    base_variant: str  # the row ``before`` is: ``BASE`` or a placement (``PLACEMENTS``)
    time_ratio: float | None  # after / before: reference iterations, else wall seconds
    time_unit: str  # "ref" (host speed index) or "s"
    kept: bool  # the next recipe took this variant

    @property
    def change(self) -> list[float]:
        return [a - b for a, b in zip(self.after, self.before, strict=True)]


def _files(results: Path) -> dict[str, list[dict]]:
    """Each ``RECIPES`` file's rows, read once (no rows for a file that is not there); a
    ``levers_*.json`` of a recipe not in ``RECIPES`` stops with its name."""
    unknown = sorted(p.name for p in results.glob("levers_*.json") if p.name not in RECIPES)
    if unknown:
        raise SystemExit(f"lever_table.py: {', '.join(unknown)} not in RECIPES: add the recipe "
                         "it ran (and its parent in PARENTS) to benchmarks/lever_table.py")
    return {name: json.loads((results / name).read_text())["rows"]
            if (results / name).is_file() else [] for name in RECIPES}


def _find(rows: list[dict], model: str, setting: str, variant: str) -> dict | None:
    return next((r for r in rows if (r["model"], r["setting"], r["variant"])
                 == (model, setting, variant)), None)


def _base(files: dict[str, list[dict]], name: str, model: str, setting: str,
          variant: str) -> tuple[dict, str, str] | None:
    """The row ``variant`` is measured against at ``model``/``setting``, the file it is in and
    what it is: its placement's row in ``name`` where ``variant`` is a lever on top of a
    placement (a placement itself is measured against the recipe), else the recipe's."""
    if variant not in PLACEMENTS:
        placement = next((p for p in PLACEMENTS if variant.startswith(p + ", ")), None)
        row = None if placement is None else _find(files[name], model, setting, placement)
        if row is not None:
            return row, name, placement
    own = _find(files[name], model, setting, BASE)
    if own is not None:
        return own, name, BASE
    if name in PARENTS:
        parent, parent_variant = PARENTS[name]
        row = _find(files[parent], model, setting, parent_variant)
        if row is not None:  # the parent's own recipe row is not this recipe: only this one
            return row, parent, BASE
    return None


def _by_seed(row: dict, key: str) -> dict[int, float]:
    """A row's per-seed list ``key`` by seed (nothing where the row has no such list: rows
    written before reports recorded the host speed index have no reference iterations)."""
    values = row.get(key)
    if values is None:
        return {}
    return {s: v for s, v in zip(row["seeds"], values, strict=True) if v is not None}


def _time_ratio(after: dict, before: dict, seeds: list[int],
                same_file: bool) -> tuple[float | None, str]:
    """after / before on ``seeds``: reference iterations where both rows have them for every
    seed (comparable across hosts), else the wall seconds where both rows are of one file
    (one recipe's runs, often one sitting); None otherwise."""
    keys = [("calib_reference_iters", "ref")] + ([("calib_seconds", "s")] if same_file else [])
    for key, unit in keys:
        a, b = _by_seed(after, key), _by_seed(before, key)
        if all(s in a and s in b for s in seeds):
            return statistics.mean(a[s] for s in seeds) / statistics.mean(b[s] for s in seeds), unit
    return None, "s"


def levers(results: Path = RESULTS) -> list[Lever]:
    """Every variant of every ``levers_*.json`` that has a *before* row (see the module's
    docstring), in file order (``RECIPES``), then as the file lists them."""
    return _levers(_files(results))


def _levers(files: dict[str, list[dict]]) -> list[Lever]:
    kept = {(parent, variant) for parent, variant in PARENTS.values()}
    out = []
    for name, rows in files.items():
        for r in rows:
            if r["variant"] == BASE:
                continue
            found = _base(files, name, r["model"], r["setting"], r["variant"])
            if found is None:
                continue
            base, base_file, base_variant = found
            b, a = _by_seed(base, "top1"), _by_seed(r, "top1")
            seeds = [s for s in r["seeds"] if s in a and s in b]
            if not seeds:
                continue
            ratio, unit = _time_ratio(r, base, seeds, base_file == name)
            out.append(Lever(name, r["model"], r["setting"], r["variant"], seeds,
                             [b[s] for s in seeds], [a[s] for s in seeds], base_file,
                             base_variant, ratio, unit, (name, r["variant"]) in kept))
    return out


def unpaired(results: Path = RESULTS) -> list[str]:
    """The variants ``levers`` leaves out: no *before* row at their model and setting."""
    files = _files(results)
    return _unpaired(files, _levers(files))


def _unpaired(files: dict[str, list[dict]], paired: list[Lever]) -> list[str]:
    found = {(x.file, x.model, x.setting, x.variant) for x in paired}
    return [f"{name}: {r['model']} {r['setting']} {r['variant']}"
            for name, rows in files.items() for r in rows
            if r["variant"] != BASE
            and (name, r["model"], r["setting"], r["variant"]) not in found]


def _mean_sd(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{sd}"


def line(x: Lever) -> str:
    """One lever as a table line."""
    change = statistics.mean(x.change)
    seeds = ", ".join(f"{c:+.2f}" for c in x.change)
    base = "" if x.base_file == x.file else f" ({x.base_file})"
    base += "" if x.base_variant == BASE else f" ({x.base_variant})"
    time = "-" if x.time_ratio is None else f"{x.time_ratio:.2f}x" + (
        "" if x.time_unit == "ref" else " (s)")
    return (f"| {RECIPES[x.file]} | {x.model} | {x.setting} | {x.variant} | "
            f"{_mean_sd(x.before)}{base} | {_mean_sd(x.after)} | {change:+.2f} ({seeds}) | "
            f"{time} | {'yes' if x.kept else ''} |")


def lever_table(results: Path = RESULTS) -> str:
    """The markdown table of ``levers``, with the variants it could not pair listed below."""
    files = _files(results)
    paired = _levers(files)
    out = [HEADER, *(line(x) for x in paired)]
    left = _unpaired(files, paired)
    if left:
        out += ["", "Not paired (no row of the recipe at that model and setting): "
                + "; ".join(left) + "."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(lever_table(), end="")
