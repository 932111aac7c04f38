"""Memory of a unit's reconstruction beyond its cache: the process's resident memory (RSS) at
the end of every Lightning batch of one unit's fit, against the RSS just before the fit.

    .venv/bin/python benchmarks/step_memory.py [--model resnet18] [--unit layer1.0]
        [--image-size 224] [--calib 128] [--batch 64] [--iters 40]

Random weights and random images (memory does not depend on the values; the images of
``speed.py --images random``). To measure another
revision, run it from a git worktree of that revision with ``PYTHONPATH=<worktree>`` (as
``speed_before_after.sh`` does). Prints one line and writes
``benchmarks/results/step_memory_<model>_<unit>.json`` (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import gc
import logging
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from result_json import write_result
from speed import calibration_batches

from attnround_pl.calib import BlockReconstruction, build_unit_data
from attnround_pl.calib.pipeline import machine
from attnround_pl.models import build_model, split_units
from attnround_pl.quant import QuantConfig, calibrate_activations, fold_batchnorms, quantize_model

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> int:
    """This process's resident memory now, MiB (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


class PeakRSS(pl.Callback):
    """The largest RSS seen at the end of a Lightning batch."""

    def __init__(self) -> None:
        self.peak = 0

    def on_train_batch_end(self, *args: object) -> None:
        self.peak = max(self.peak, rss_mib())


def measure(model: str, unit_name: str, image_size: int, calib: int, batch: int,
            iters: int) -> dict:
    torch.manual_seed(0)
    images = calibration_batches(model, "random", calib, image_size)
    qmodel = quantize_model(build_model(model, weights=None), QuantConfig())
    calibrate_activations(qmodel, images)
    folded = build_model(model, weights=None)
    fold_batchnorms(folded)
    units = {u.name: u for u in split_units(qmodel, example=images[0][:2])}
    if unit_name not in units:
        raise SystemExit(f"--unit {unit_name!r}: not a unit of {model} (units: "
                         f"{', '.join(units)})")
    unit = units[unit_name]
    data = build_unit_data(qmodel, folded, unit.path, images, "cpu")
    del images
    gc.collect()
    before = rss_mib()
    module = BlockReconstruction(unit.module(qmodel), data, unit.name, iters=iters,
                                 batch_size=batch)
    watch = PeakRSS()
    trainer = pl.Trainer(max_steps=iters, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, callbacks=[watch])
    trainer.fit(module)
    return {"model": model, "unit": unit_name, "image_size": image_size, "calib": calib,
            "batch": batch, "iters": iters, "cache_mib": round(data.nbytes / 2**20),
            "rss_before_fit_mib": before, "rss_peak_at_batch_end_mib": watch.peak,
            "increase_mib": watch.peak - before, "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--unit", default="layer1.0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.calib < args.batch:
        parser.error(f"--calib {args.calib} holds fewer images than one --batch {args.batch}")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    result = measure(args.model, args.unit, args.image_size, args.calib, args.batch, args.iters)
    r = result
    print(f"{args.model} {args.unit}: cache {r['cache_mib']} MiB; RSS {r['rss_before_fit_mib']} "
          f"MiB before the fit, at most {r['rss_peak_at_batch_end_mib']} MiB at a batch's end: "
          f"+{r['increase_mib']} MiB")
    write_result(args.out / f"step_memory_{args.model}_{args.unit}.json", result)


if __name__ == "__main__":
    main()
