"""How far BRECQ's Fisher weights (``recon.loss``) are from the plain squared error, per unit.

For each unit of the embedded models, quantized as a calibration starts (Attention Round's
starting point, the activation steps searched; every earlier unit at round-to-nearest, not
learned), ``calib.fisher.output_gradients`` gives ``g`` at the unit's output on the calibration
images; the table shows ``|g|`` and the two weight forms: BRECQ's code's ``(|g| + 1)^2``
(``fisher_damped``) and the paper's ``g^2`` scaled to mean 1 (``fisher``). Prints a markdown
table and writes benchmarks/results/fisher_weights.json.

    .venv/bin/python benchmarks/fisher_weights.py [--models resnet20 mobilenetv2] [--bits 2 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from result_json import write_result

from attnround_pl.calib.fisher import fisher_weights, output_gradients
from attnround_pl.calib.pipeline import machine
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.models import build_model, split_units
from attnround_pl.quant import (
    QuantConfig,
    calibrate_activations,
    fold_batchnorms,
    quantize_model,
    round_to_nearest,
)

HEADER = ("| model | unit | mean \\|g\\| | 99th pct \\|g\\| | max \\|g\\| | fisher_damped: max "
          "weight | fisher: share of weights < 0.01 | fisher: max weight |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def quantile(values: torch.Tensor, q: float) -> float:
    """``torch.quantile`` takes at most 2^24 elements: every k-th of a larger tensor."""
    flat = values.flatten()
    step = max(1, flat.numel() // 2**24 + 1)
    return flat[::step].quantile(q).item()


def unit_rows(model: str, w_bits: int, a_bits: int, batches: list[torch.Tensor],
              batch_size: int, weights: str | None = "DEFAULT") -> list[dict]:
    """One row per unit of ``model`` (its embedded weights; None: random) on ``batches``."""
    folded = build_model(model, weights=weights)
    qmodel = quantize_model(folded, QuantConfig(w_bits=w_bits, a_bits=a_bits))
    fold_batchnorms(folded)
    calibrate_activations(qmodel, batches)
    units = split_units(qmodel)
    rows = []
    for index, unit in enumerate(units):
        with round_to_nearest(qmodel):
            g = output_gradients(qmodel, folded, units, index, batches, batch_size).abs_()
        damped = fisher_weights(g.clone(), "fisher_damped")
        paper = fisher_weights(g.clone(), "fisher")
        rows.append({
            "model": model, "unit": unit.name, "mean_abs_g": g.mean().item(),
            "p99_abs_g": quantile(g, 0.99), "max_abs_g": g.max().item(),
            "damped_max_weight": damped.max().item(),
            "fisher_below_0.01": (paper < 0.01).float().mean().item(),
            "fisher_max_weight": paper.max().item(),
        })
        print(row_line(rows[-1]), flush=True)
    return rows


def row_line(row: dict) -> str:
    return (f"| {row['model']} | {row['unit']} | {row['mean_abs_g']:.1e} | "
            f"{row['p99_abs_g']:.1e} | {row['max_abs_g']:.1e} | {row['damped_max_weight']:.4f} "
            f"| {100 * row['fisher_below_0.01']:.0f} % | {row['fisher_max_weight']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--bits", type=int, nargs=2, default=[2, 2], metavar=("W", "A"))
    parser.add_argument("--images", type=int, default=1024, help="calibration images")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="the reconstruction's batch size, which scales g (64: ours)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    print(HEADER)
    data = FashionMNISTDataModule(calib_size=args.images)
    batches = [x for x, _ in data.calib_dataloader(256)]
    rows = [row for model in args.models
            for row in unit_rows(model, *args.bits, batches, args.batch_size)]
    command = "python benchmarks/fisher_weights.py " + " ".join(
        ["--models", *args.models, "--bits", *map(str, args.bits), "--images",
         str(args.images), "--batch-size", str(args.batch_size)])
    result = {"command": command, "machine": machine(), "w_bits": args.bits[0],
              "a_bits": args.bits[1], "rows": rows}
    write_result(args.out / "fisher_weights.json", result)


if __name__ == "__main__":
    main()
