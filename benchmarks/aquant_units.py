"""Unit-level measurement of AQuant's border on the embedded ResNet-20.

For each unit and bit width: reconstruct the unit (Attention Round weights, learned steps) with
the 0.5 border and with the learned border, and compare the unit output MSE. Prints a markdown
table and writes benchmarks/results/aquant_units.json.

    .venv/bin/python benchmarks/aquant_units.py [--iters 500] [--units layer1.1 layer2.1 layer3.1]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import lightning.pytorch as pl
from result_json import write_result

from attnround_pl.calib import BlockReconstruction, build_unit_data, unit_mse
from attnround_pl.calib.pipeline import machine
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.models import build_model
from attnround_pl.quant import QuantConfig, calibrate_activations, fold_batchnorms, quantize_model

VARIANTS = ("nearest", "aquant")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--units", nargs="+", default=["layer1.1", "layer2.1", "layer3.1"])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    batches = [x for x, _ in FashionMNISTDataModule(calib_size=1024).calib_dataloader(256)]
    folded = build_model("resnet20")
    fold_batchnorms(folded)
    rows = []
    print("| unit | W/A bits | MSE 0.5 border | learned border |")
    print("| --- | --- | ---: | ---: |")
    for unit_name in args.units:
        for bits in args.bits:
            mse = {}
            for label in VARIANTS:
                cfg = QuantConfig(w_bits=bits, a_bits=bits, rounding="attention", act_border=label)
                q = quantize_model(build_model("resnet20"), cfg)
                calibrate_activations(q, batches)
                data = build_unit_data(q, folded, unit_name, batches)
                unit = q.get_submodule(unit_name)
                module = BlockReconstruction(unit, data, unit_name, iters=args.iters)
                pl.Trainer(max_steps=args.iters, max_epochs=1, logger=False,
                           enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, accelerator="cpu").fit(module)
                unit.eval()
                mse[label] = unit_mse(unit, data)
            base = mse["nearest"]
            rel = {k: 100 * (v / base - 1) for k, v in mse.items()}
            rows.append({"unit": unit_name, "bits": bits, "mse": mse, "relative_pct": rel})
            print(f"| {unit_name} | W{bits}A{bits} | {base:.4e} | {mse['aquant']:.4e} "
                  f"({rel['aquant']:+.1f} %) |", flush=True)
    result = {"iters": args.iters, "calib_size": 1024, "machine": machine(), "rows": rows,
              "command": "python benchmarks/aquant_units.py"}
    write_result(args.out / "aquant_units.json", result)


if __name__ == "__main__":
    main()
