"""Mixed precision without calibration: how eps^2 and the size budget move the allocation.

For each embedded model and bit list: the per-layer bits Algorithm 1 gives at eps^2 = 1e-6 ..
10 (one per decade) and with ``budget_bits 4`` (no larger than uniform W4), the model size
beside the uniform W3/W4/W5 sizes (first/last layers at 8 bits in all). Weights only, no data:
seconds on 2 cores. Prints a markdown table and writes ``benchmarks/results/mixed_sizes.json``.

    .venv/bin/python benchmarks/mixed_sizes.py
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from result_json import write_result

from attnround_pl.calib.pipeline import machine
from attnround_pl.mixed.allocation import allocate_model
from attnround_pl.mixed.config import MixedConfig
from attnround_pl.models import build_model
from attnround_pl.quant import QuantConfig

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet20", "mobilenetv2")
BIT_LISTS = ([3, 4, 5, 6], [3, 4, 5])
EPS2 = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
UNIFORM = (3, 4, 5)


@cache
def float_model(model: str):  # nn.Module
    """The embedded model, built once (the allocation works on a copy)."""
    return build_model(model)


def allocation_row(model: str, bit_list: list[int], mixed: dict) -> dict:
    """One allocation of ``model`` (the embedded weights) with ``mixed`` settings."""
    config = MixedConfig(bit_list=bit_list, **mixed).validate()
    allocation = allocate_model(float_model(model), config, QuantConfig())
    return {
        "model": model, "bit_list": bit_list, "eps2": allocation.eps2,
        "budget_bits": mixed.get("budget_bits"), "cluster_bits": allocation.cluster_bits,
        "size_mb": allocation.size_mb(),
        "uniform_mb": {b: allocation.uniform_size_mb(b) for b in UNIFORM},
        "bits": [r.bits for r in allocation.rows],
    }


def line(row: dict) -> str:
    eps2 = f"{row['eps2']:.3g}" + (f" (budget W{row['budget_bits']})" if row["budget_bits"] else "")
    uniform = " / ".join(f"{row['uniform_mb'][b]:.4f}" for b in UNIFORM)
    bits = "".join(str(b) for b in row["bits"])
    return (f"| {row['model']} | {row['bit_list']} | {eps2} | {row['size_mb']:.4f} | {uniform} "
            f"| {row['cluster_bits']} | `{bits}` |")


def main() -> None:
    print(
        "| model | bit list | eps² | size MB | uniform W3 / W4 / W5 MB | cluster bits "
        "| bits per layer (forward order) |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    rows = []
    for model in MODELS:
        for bit_list in BIT_LISTS:
            settings = [{"eps2": e} for e in EPS2] + [{"budget_bits": 4}]
            for mixed in settings:
                rows.append(allocation_row(model, bit_list, mixed))
                print(line(rows[-1]), flush=True)
    result = {"command": "python benchmarks/mixed_sizes.py", "machine": machine(), "rows": rows}
    write_result(RESULTS / "mixed_sizes.json", result)


if __name__ == "__main__":
    main()
