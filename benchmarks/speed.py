"""Speed benchmark: one reconstruction iteration per unit against the float unit's own
forward + backward at the same batch (the floor no implementation can beat).

For each unit of the embedded model: seconds per iteration of ``BlockReconstruction`` through a
Lightning Trainer (what ``calibrate`` runs), of the same module in a bare PyTorch loop, and of
the BN-folded float unit's forward + backward (gradients w.r.t. its weights). Prints a markdown
table and writes ``benchmarks/results/speed_<model>.json``.

    .venv/bin/python benchmarks/speed.py [--model resnet20] [--iters 200] [--batch 64]
        [--accelerator cpu|gpu]

The embedded models are timed on Fashion-MNIST calibration images. ``--images random`` times
any model of the zoo on random images of ``--image-size`` pixels with random weights (timing
does not depend on the values): how the ratio behaves at ImageNet scale, where the convolutions
are larger than the elementwise work of the quantizers, e.g.
``--model resnet18 --images random --image-size 224 --iters 10 --calib 64``.
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
from attnround_pl.models import EMBEDDED, build_model, split_units
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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously), so a clock read after it
    counts them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_iter(fn, iters: int, device: torch.device) -> float:  # noqa: ANN001
    fn()  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / iters


def calibration_batches(model: str, images: str, count: int, size: int) -> list[torch.Tensor]:
    """``count`` Fashion-MNIST calibration images, or random ones (N(0, 1), ``size`` pixels,
    3 channels for torchvision models, 1 for the embedded ones), in batches of up to 256."""
    if images == "fmnist":
        if model not in EMBEDDED:
            raise SystemExit(f"{model}: no ImageNet here; time it with --images random")
        data = FashionMNISTDataModule(root=str(ROOT / "data"), calib_size=count)
        return [x for x, _ in data.calib_dataloader(256)]
    channels = 1 if model in EMBEDDED else 3
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(min(256, count - i), channels, size, size, generator=gen)
            for i in range(0, count, 256)]  # fmt: skip


def measure(model: str, batches: list[torch.Tensor], iters: int, batch: int,
            weights: str | None = "DEFAULT", accelerator: str = "cpu") -> list[dict]:  # fmt: skip
    """Per unit: ms per iteration through Lightning, in a bare loop, and of the float unit's
    forward + backward; prints one markdown row per unit as it is measured. With
    ``accelerator='gpu'`` the unit's cache lives on the GPU (as ``recon.cache_device: auto``
    puts it when it fits) and each unit is moved there for its timings, then back."""
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    qmodel = quantize_model(build_model(model, weights=weights), QuantConfig())
    calibrate_activations(qmodel, batches)
    folded = build_model(model, weights=weights)
    fold_batchnorms(folded)
    rows = []
    print("| unit | Lightning ms/iter | bare loop ms/iter | float fwd+bwd ms | "
          "ratio (Lightning / float) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for unit_spec in split_units(qmodel):
        data = build_unit_data(qmodel, folded, unit_spec.path, batches, str(device))
        unit = qmodel.get_submodule(unit_spec.path)
        saved = copy.deepcopy(unit.state_dict())
        module = BlockReconstruction(unit, data, unit_spec.name, iters=iters,
                                     batch_size=batch)  # fmt: skip
        trainer = pl.Trainer(max_steps=iters, max_epochs=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator=accelerator,
                             devices=1)  # fmt: skip
        started = time.perf_counter()
        trainer.fit(module)  # the Trainer moves the unit to the device and back
        synchronize(device)
        lightning_s = (time.perf_counter() - started) / iters
        unit.load_state_dict(saved)
        unit.to(device)

        opt = module.configure_optimizers()
        x, y = data.inputs[:batch], data.targets[:batch]
        set_learning(unit, batch)

        bare_s = per_iter(partial(bare_step, unit, opt, x, y), iters, device)
        set_learning(unit, None)
        unit.load_state_dict(saved)
        unit.to("cpu")  # the next unit's cache is captured through the whole model on the host
        float_unit = folded.get_submodule(unit_spec.path) if unit_spec.path else folded
        float_unit.to(device)
        float_params = [p.requires_grad_(True) for p in float_unit.parameters()]
        float_s = per_iter(partial(float_step, float_unit, float_params, x, y), iters, device)
        float_unit.to("cpu")
        row = {"unit": unit_spec.name, "lightning_ms": 1e3 * lightning_s,
               "bare_ms": 1e3 * bare_s, "float_fwd_bwd_ms": 1e3 * float_s,
               "ratio": lightning_s / float_s}  # fmt: skip
        rows.append(row)
        print(f"| {row['unit']} | {row['lightning_ms']:.2f} | {row['bare_ms']:.2f} | "
              f"{row['float_fwd_bwd_ms']:.2f} | {row['ratio']:.2f} |", flush=True)  # fmt: skip
    return rows


def totals(rows: list[dict]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) for k in ("lightning_ms", "bare_ms", "float_fwd_bwd_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", choices=("fmnist", "random"), default="fmnist")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--calib", type=int, default=256, help="calibration images cached")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: torch sees no CUDA device on this machine")
    if args.calib < args.batch:
        parser.error(f"--calib {args.calib} holds fewer images than one --batch {args.batch}")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    batches = calibration_batches(args.model, args.images, args.calib, args.image_size)
    weights = "DEFAULT" if args.images == "fmnist" else None
    rows = measure(args.model, batches, args.iters, args.batch, weights, args.accelerator)
    total = totals(rows)
    print(f"| all units | {total['lightning_ms']:.2f} | {total['bare_ms']:.2f} | "
          f"{total['float_fwd_bwd_ms']:.2f} | "
          f"{total['lightning_ms'] / total['float_fwd_bwd_ms']:.2f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "batch": args.batch, "iters": args.iters,
              "images": args.images, "image_size": list(batches[0].shape[1:]),
              "calib": args.calib, "accelerator": args.accelerator, "rows": rows,
              "total": total, "machine": machine(),
              "torch_threads": torch.get_num_threads(),
              "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:])}  # fmt: skip
    suffix = "" if args.images == "fmnist" else f"_random{args.image_size}"
    suffix += "_gpu" if args.accelerator == "gpu" else ""
    path = args.out / f"speed_{args.model}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
