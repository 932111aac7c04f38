"""Speed benchmark: one reconstruction iteration per unit against the float unit's own
forward + backward at the same batch (the floor no implementation can beat).

For each unit of the embedded model: seconds per iteration of ``BlockReconstruction`` through a
Lightning Trainer (what ``calibrate`` runs), of the same module in a bare PyTorch loop, and of
the BN-folded float unit's forward + backward (gradients w.r.t. its weights). Prints a markdown
table and writes ``benchmarks/results/speed_<model>.json``.

    .venv/bin/python benchmarks/speed.py [--model resnet20] [--iters 200] [--batch 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch

from attnround_pl.calib import BlockReconstruction, build_unit_data
from attnround_pl.calib.pipeline import machine
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.models import build_model, split_units
from attnround_pl.quant import (
    QuantConfig,
    calibrate_activations,
    finish_rounding_gradients,
    fold_batchnorms,
    quantize_model,
    reconstruction_loss,
    set_learning,
)

ROOT = Path(__file__).resolve().parents[1]


def bare_step(unit: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
              y: torch.Tensor) -> None:  # fmt: skip
    """One reconstruction iteration without Lightning."""
    opt.zero_grad()
    reconstruction_loss(unit(x), y).backward()
    finish_rounding_gradients(unit)
    opt.step()


def float_step(unit: torch.nn.Module, weights: list[torch.Tensor], x: torch.Tensor,
               y: torch.Tensor) -> None:  # fmt: skip
    """The float unit's forward + backward (gradients w.r.t. its weights)."""
    for p in weights:
        p.grad = None
    reconstruction_loss(unit(x), y).backward()


def per_iter(fn, iters: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - started) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    batches = [x for x, _ in FashionMNISTDataModule(root=str(ROOT / "data"), calib_size=256)
               .calib_dataloader(256)]  # fmt: skip
    qmodel = quantize_model(build_model(args.model), QuantConfig())
    calibrate_activations(qmodel, batches)
    folded = build_model(args.model)
    fold_batchnorms(folded)
    rows = []
    print("| unit | Lightning ms/iter | bare loop ms/iter | float fwd+bwd ms | "
          "ratio (Lightning / float) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for unit_spec in split_units(qmodel):
        data = build_unit_data(qmodel, folded, unit_spec.path, batches)
        unit = qmodel.get_submodule(unit_spec.path)
        saved = copy.deepcopy(unit.state_dict())
        module = BlockReconstruction(unit, data, unit_spec.name, iters=args.iters,
                                     batch_size=args.batch)  # fmt: skip
        trainer = pl.Trainer(max_steps=args.iters, max_epochs=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
        started = time.perf_counter()
        trainer.fit(module)
        lightning_s = (time.perf_counter() - started) / args.iters
        unit.load_state_dict(saved)

        opt = module.configure_optimizers()
        x, y = data.inputs[: args.batch], data.targets[: args.batch]
        set_learning(unit, args.batch)

        bare_s = per_iter(partial(bare_step, unit, opt, x, y), args.iters)
        set_learning(unit, None)
        unit.load_state_dict(saved)
        float_unit = folded.get_submodule(unit_spec.path) if unit_spec.path else folded
        weights = [p.requires_grad_(True) for p in float_unit.parameters()]
        float_s = per_iter(partial(float_step, float_unit, weights, x, y), args.iters)
        row = {"unit": unit_spec.name, "lightning_ms": 1e3 * lightning_s,
               "bare_ms": 1e3 * bare_s, "float_fwd_bwd_ms": 1e3 * float_s,
               "ratio": lightning_s / float_s}  # fmt: skip
        rows.append(row)
        print(f"| {row['unit']} | {row['lightning_ms']:.2f} | {row['bare_ms']:.2f} | "
              f"{row['float_fwd_bwd_ms']:.2f} | {row['ratio']:.2f} |", flush=True)  # fmt: skip
    total = {k: sum(r[k] for r in rows) for k in ("lightning_ms", "bare_ms", "float_fwd_bwd_ms")}
    print(f"| all units | {total['lightning_ms']:.2f} | {total['bare_ms']:.2f} | "
          f"{total['float_fwd_bwd_ms']:.2f} | "
          f"{total['lightning_ms'] / total['float_fwd_bwd_ms']:.2f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "batch": args.batch, "iters": args.iters, "rows": rows,
              "total": total, "machine": machine(), "torch_threads": torch.get_num_threads(),
              "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:])}  # fmt: skip
    path = args.out / f"speed_{args.model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
