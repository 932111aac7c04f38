"""Markdown tables of a ``speed_before_after.sh`` folder (the speed page's tables):

    .venv/bin/python benchmarks/speed_table.py <folder> [--units <json>]
    .venv/bin/python benchmarks/speed_table.py <folder> [<folder> ...] --spread

The summary: per model and run, the steady milliseconds per iteration summed over the units
(before, after, as run), the float units' forward + backward measured in the same run, and the
ratios (the floor timed after the fit, ``after_fit_floor``). ``--units``: one speed JSON's
per-unit table. ``--spread``: per model and kind, the median ratio and range over the runs of
one or more folders (several sittings of one host).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

KINDS = ("before", "after", "as-run")


def load_runs(folder: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """{(model and image size, run id): {kind: result}} for every run found under ``folder``;
    a model's runs pair whatever their file names add (as run, units, compile mode)."""
    runs: dict[tuple[str, str], dict[str, dict]] = {}
    for kind in KINDS:
        for path in sorted((folder / kind).glob("r*/speed_*.json")):
            result = json.loads(path.read_text())
            size = "x".join(map(str, result["image_size"][1:]))
            runs.setdefault((f"{result['model']} {size} px", path.parent.name), {})[kind] = result
    return runs


def _cell(result: dict | None) -> str:
    if result is None:
        return "- | - | -"
    total = result["total"]
    steady, floor = total["lightning_steady_ms"], after_fit_floor(total)
    return f"{steady:.1f} | {floor:.1f} | **{steady_ratio(total):.2f}x**"


def after_fit_floor(times: dict) -> float:
    """The float floor timed after the fit, as speed.py times it: a run of commit 08dec2f
    (2026-12-06, night; tried and left out) also timed one between the fit's batches, as
    ``float_fwd_bwd_ms``, and kept this one as ``float_after_ms``."""
    return times.get("float_after_ms", times["float_fwd_bwd_ms"])


def steady_ratio(times: dict) -> float:
    """The steady step over the float floor timed after the fit (a unit's row or the total)."""
    return times["lightning_steady_ms"] / after_fit_floor(times)


def summary(folder: Path) -> str:
    lines = [
        "| model, run | before: steady ms | float ms | ratio | after: steady ms | float ms | "
        "ratio | as run: steady ms | float ms | ratio |",
        "| --- |" + " ---: |" * 9,
    ]
    for (name, run), kinds in load_runs(folder).items():
        label = f"{name}, {run}"
        cells = " | ".join(_cell(kinds.get(kind)) for kind in KINDS)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def spread(folders: list[Path]) -> str:
    """Per model and kind, over every run in ``folders`` (the sittings of one host): how many
    runs, the median summed ratio, its range, and how many runs read above 2.0 (issue 31's
    target); on these hosts a single run's ratio moves by up to a fifth."""
    ratios: dict[tuple[str, str], list[float]] = {}
    for folder in folders:
        for (name, _), kinds in load_runs(folder).items():
            for kind, result in kinds.items():
                ratios.setdefault((name, kind), []).append(steady_ratio(result["total"]))
    lines = ["| model | kind | runs | median ratio | range | runs above 2.0 |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for (name, kind), values in sorted(ratios.items()):
        lines.append(f"| {name} | {kind} | {len(values)} | {statistics.median(values):.2f}x | "
                     f"{min(values):.2f}-{max(values):.2f}x | {sum(v > 2.0 for v in values)} |")
    return "\n".join(lines)


def units(path: Path) -> str:
    result = json.loads(path.read_text())
    lines = [
        "| unit | steady ms | bare loop ms | float fwd+bwd ms | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in [*result["rows"], {**result["total"], "unit": "all units"}]:
        lines.append(f"| {r['unit']} | {r['lightning_steady_ms']:.2f} | {r['bare_ms']:.2f} | "
                     f"{after_fit_floor(r):.2f} | {steady_ratio(r):.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="+",
                        help="a speed_before_after.sh folder; with --spread, one or more")
    parser.add_argument("--units", type=Path, help="a speed JSON: its per-unit table instead")
    parser.add_argument("--spread", action="store_true",
                        help="each model's median ratio and range over the folders' runs")
    args = parser.parse_args()
    if args.units:
        print(units(args.units))
    elif args.spread:
        print(spread(args.folder))
    elif len(args.folder) > 1:
        parser.error("one folder, or several with --spread")
    else:
        print(summary(args.folder[0]))


if __name__ == "__main__":
    main()
