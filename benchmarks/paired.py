"""Paired comparison of finished calibrations: the images each model gets right alone.

Two quantized models evaluated on the same images disagree on a few of them only. Counting those
measures a top-1 change far more finely than two top-1s and their seed spreads can: the change
per image is -1, 0 or +1, and its mean's standard error counts only the images the two differ on.

    .venv/bin/python benchmarks/paired.py --before RUN [RUN ...] --after RUN [RUN ...]
    .venv/bin/python benchmarks/paired.py --runs benchmarks/runs/goal_epyc \\
        --before resnet20_W2A4_qdrop_s0 resnet20_W2A4_qdrop_s1 resnet20_W2A4_qdrop_s2 \\
        --after resnet20_W2A4_attnround_blocks_s0 resnet20_W2A4_attnround_blocks_s1 \\
                resnet20_W2A4_attnround_blocks_s2 --json benchmarks/results/paired.json

Runs are paired in order (seed with seed). Each run's quantized model is reloaded from its folder
and evaluated on the images its ``config.yaml`` names (its data module's evaluation split; run
from the folder the calibration ran in, so a relative data root resolves alike); a run whose
reported top-1 this does not reproduce is refused. Where every run evaluated the same images
(the test set, whatever the seed), the pairs are also pooled image by image: per image the mean
over the pairs of (right after - right before), whose mean is the top-1 change over the pairs
and whose standard error over the images is what sampling the test images leaves of it (for
these models: it does not count how much another seed's models would differ; the standard error
of the mean over the pairs, from their spread, counts both, roughly with few seeds).
Validation splits differ by seed (each leaves out its seed's calibration images): those pairs are
not pooled, and the output says so; nor are pairs where a run is on both sides (seed against
seed in a cycle, ``--before s0 s1 s2 --after s1 s2 s0``, whose per-image changes cancel).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from result_json import script_command, write_result
from table_names import Z95


class PairedChange(NamedTuple):
    """Two models on the same images: the images only ``before`` gets right, only ``after``,
    and the top-1 change (after - before) with its standard error, both in pp."""

    only_before: int
    only_after: int
    change: float
    se: float


@dataclass(frozen=True)
class Evaluated:
    """A finished run's quantized model on its evaluation images: which it gets right, and a
    digest of the images and labels (runs with the same digest saw the same images)."""

    run: str
    right: torch.Tensor
    images: str

    @property
    def top1(self) -> float:
        return 100 * self.right.double().mean().item()


def paired_change(right_before: torch.Tensor, right_after: torch.Tensor) -> PairedChange:
    """Two models' right answers on the same images, paired (``pooled_change`` of one pair).
    Per image the change is -1, 0 or +1; its mean's standard error, ``sqrt(b + c - (c - b)^2
    / n) / n`` with ``b``, ``c`` the images only one of the two gets right, counts only the
    images where the two differ, so it is far below either top-1's own."""
    if right_before.shape != right_after.shape:
        raise ValueError(f"paired runs evaluated {right_before.numel()} and "
                         f"{right_after.numel()} images: not the same images")
    only_before = int((right_before & ~right_after).sum())
    only_after = int((right_after & ~right_before).sum())
    return PairedChange(only_before, only_after, *pooled_change([right_before], [right_after]))


def pooled_change(befores: list[torch.Tensor], afters: list[torch.Tensor]) -> tuple[float, float]:
    """The top-1 change over several pairs on the same images, and its standard error over the
    images (pp): per image the mean over pairs of (right after - right before)."""
    changes = [a.double() - b.double() for b, a in zip(befores, afters, strict=True)]
    per_image = torch.stack(changes).mean(0)
    n = per_image.numel()
    variance = (per_image.pow(2).mean() - per_image.mean().pow(2)).clamp(min=0).item()
    return 100 * per_image.mean().item(), 100 * math.sqrt(variance / n)


def evaluation_images(run: Path, data: dict[str, Any]) -> tuple[list, str]:
    """The batches a run was evaluated on, rebuilt from ``data``, the data module its
    ``config.yaml`` names (class path and arguments), and a digest of their images and labels."""
    from attnround_pl.data import evaluation_batches

    module, name = data["class_path"].rsplit(".", 1)
    datamodule = getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))
    batches = evaluation_batches(datamodule)
    if batches is None:
        raise SystemExit(f"paired.py: {run} has no evaluation images (its data module offers "
                         "no evaluation split)")
    batches = [(x, y) for x, y in batches]
    digest = hashlib.sha256()
    for x, y in batches:
        digest.update(x.contiguous().numpy().tobytes())
        digest.update(y.contiguous().numpy().tobytes())
    return batches, digest.hexdigest()[:16]


def _data_section(run: Path) -> dict[str, Any]:
    config = run / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"paired.py: {run} holds no config.yaml: not a finished run folder "
                         "of the attnround-pl CLI")
    data = yaml.safe_load(config.read_text()).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise SystemExit(f"paired.py: {config} names no data module (data.class_path)")
    return data


def evaluate(run: Path, cache: dict[str, tuple[list, str]] | None = None) -> Evaluated:
    """A finished run's quantized model on its evaluation images. ``cache``: batches and their
    digest already built, by data section (runs with the same data section share them). Refuses
    a run whose reported top-1 this does not reproduce."""
    from attnround_pl.api import load

    if not (run / "report.json").is_file():
        raise SystemExit(f"paired.py: {run} holds no report.json: its calibration did not finish")
    data = _data_section(run)
    key = json.dumps(data, sort_keys=True)
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = evaluation_images(run, data)
    batches, digest = cache[key]
    net = load(run).eval()
    with torch.no_grad():
        right = torch.cat([net(x).argmax(1) == y for x, y in batches])
    result = Evaluated(str(run), right, digest)
    reported = net.report.quantized.top1
    if abs(result.top1 - reported) > 1e-3:
        raise SystemExit(f"paired.py: {run} reports top-1 {reported:.3f} but reads "
                         f"{result.top1:.3f} on the images rebuilt here (another data root, "
                         "or run from another folder?)")
    return result


@dataclass(frozen=True)
class Comparison:
    """Every pair's change, and the pooled change where all runs saw the same images and no run
    is on both sides (``not_pooled`` says why not)."""

    pairs: list[dict[str, Any]]
    pooled_change: float | None
    pooled_se: float | None
    mean_of_pairs: float
    pairs_sd: float | None
    not_pooled: str | None = None

    @property
    def pairs_se(self) -> float | None:
        """The standard error of the mean change over the pairs, from their spread."""
        return None if self.pairs_sd is None else self.pairs_sd / math.sqrt(len(self.pairs))


def compare(befores: list[Evaluated], afters: list[Evaluated]) -> Comparison:
    """Pair ``befores`` with ``afters`` in order."""
    if len(befores) != len(afters):
        raise ValueError(f"{len(befores)} runs before and {len(afters)} after: pair them "
                         "one for one")
    pairs = []
    for b, a in zip(befores, afters, strict=True):
        if b.images != a.images:
            raise ValueError(f"{b.run} and {a.run} were evaluated on different images")
        change = paired_change(b.right, a.right)
        pairs.append({"before": b.run, "after": a.run, "top1_before": b.top1,
                      "top1_after": a.top1, **change._asdict()})
    changes = [p["change"] for p in pairs]
    both_sides = sorted({b.run for b in befores} & {a.run for a in afters})
    not_pooled = None
    if len({e.images for e in befores}) > 1:
        not_pooled = ("the pairs were evaluated on different images (validation splits differ "
                      "by seed)")
    elif both_sides:
        # seed against seed in a cycle (s0 -> s1, s1 -> s2, s2 -> s0): every image's changes
        # cancel, so the pool would read 0 +- 0 whatever the seeds do
        not_pooled = (f"{Path(both_sides[0]).name} is both a run before and a run after, so "
                      "its images' changes cancel in the pool")
    pooled = ((None, None) if not_pooled else
              pooled_change([b.right for b in befores], [a.right for a in afters]))
    return Comparison(pairs, *pooled, statistics.mean(changes),
                      statistics.stdev(changes) if len(changes) > 1 else None, not_pooled)


def print_comparison(result: Comparison) -> None:
    print("| before | after | top-1 before | top-1 after | right only before | right only "
          "after | change, pp | paired SE, pp |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in result.pairs:
        print(f"| {Path(p['before']).name} | {Path(p['after']).name} | {p['top1_before']:.2f} | "
              f"{p['top1_after']:.2f} | {p['only_before']} | {p['only_after']} | "
              f"{p['change']:+.2f} | {p['se']:.2f} |")
    spread = ("" if result.pairs_sd is None else f" (sd over the pairs {result.pairs_sd:.2f}, "
              f"standard error of the mean {result.pairs_se:.2f})")
    print(f"\nmean change over the {len(result.pairs)} pairs: {result.mean_of_pairs:+.2f} pp"
          + spread)
    if result.pooled_change is None:
        print(f"not pooled: {result.not_pooled}")
    else:
        low = result.pooled_change - Z95 * result.pooled_se
        high = result.pooled_change + Z95 * result.pooled_se
        print(f"pooled image by image: {result.pooled_change:+.2f} pp, standard error "
              f"{result.pooled_se:.2f} pp over the images (95 % interval {low:+.2f} to "
              f"{high:+.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", nargs="+", required=True, help="run folders, seed by seed")
    parser.add_argument("--after", nargs="+", required=True,
                        help="run folders paired with --before's in order")
    parser.add_argument("--runs", type=Path, default=Path("."),
                        help="the folder the run names are in (default: as given)")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args()
    if len(args.before) != len(args.after):
        parser.error(f"--before names {len(args.before)} runs and --after {len(args.after)}: "
                     "pair them one for one")
    cache: dict[str, tuple[list, str]] = {}
    befores = [evaluate(args.runs / r, cache) for r in args.before]
    afters = [evaluate(args.runs / r, cache) for r in args.after]
    try:
        result = compare(befores, afters)
    except ValueError as exc:
        raise SystemExit(f"paired.py: {exc}") from None
    print_comparison(result)
    if args.json:
        record = {"command": script_command("paired.py", None),
                  **asdict(result), "pairs_se": result.pairs_se}
        write_result(args.json, record)


if __name__ == "__main__":
    main()
