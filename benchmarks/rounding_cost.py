"""The activation roundings alone: forward + backward of AQuant's border Function
(``_BorderRound``) against LSQ's (``_LSQRound``) on the activation shapes of MobileNetV2's
first unit, the CPU cost behind docs/speed.md's "With AQuant's border".

    .venv/bin/python benchmarks/rounding_cost.py [--rounds 12] [--iters 10]

Each round times ``--iters`` calls of each rounding in turn (one untimed call first), so a
change in the host's speed reaches both alike; prints the median milliseconds per call and
their ratio, and writes ``benchmarks/results/rounding_cost.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from result_json import write_result

from attnround_pl.calib.pipeline import machine
from attnround_pl.quant.act_border import AQuantBorder
from attnround_pl.quant.act_quant import lsq_round

ROOT = Path(__file__).resolve().parent
# MobileNetV2's first-unit activations at batch 64 (the embedded model, 28x28 inputs)
SHAPES = ((64, 32, 14, 14), (64, 96, 14, 14), (64, 144, 7, 7))
QMIN, QMAX, GRAD_SCALE = -8, 7, 0.01


def time_shape(shape: tuple[int, ...], rounds: int, iters: int) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    x = (0.8 * torch.randn(shape, generator=gen)).requires_grad_()
    step = torch.tensor(0.1, requires_grad=True)
    border = AQuantBorder(shape[1], reach=float(-QMIN))
    with torch.no_grad():  # a learned border: non-zero k and c
        border.k.copy_(0.02 * torch.randn(shape[1], generator=gen))
        border.c.copy_(0.05 * torch.randn(shape[1], generator=gen))
    grad = torch.randn(shape, generator=gen)
    calls = {
        "lsq": lambda: lsq_round(x, step, QMIN, QMAX, GRAD_SCALE).backward(grad),
        "border": lambda: border.quantize(x, step, QMIN, QMAX, GRAD_SCALE).backward(grad),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            started = time.perf_counter()
            for _ in range(iters):
                call()
            times[name].append((time.perf_counter() - started) / iters * 1000.0)
    lsq, aquant = statistics.median(times["lsq"]), statistics.median(times["border"])
    return {"shape": list(shape), "lsq_ms": round(lsq, 3), "border_ms": round(aquant, 3),
            "ratio": round(aquant / lsq, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "rounding_cost.json")
    args = parser.parse_args()
    rows = [time_shape(shape, args.rounds, args.iters) for shape in SHAPES]
    print("| activation shape | LSQ f+b ms | AQuant border f+b ms | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        shape = " x ".join(map(str, row["shape"]))
        print(f"| {shape} | {row['lsq_ms']:.2f} | {row['border_ms']:.2f} | {row['ratio']:.2f}x |")
    result = {"rows": rows, "rounds": args.rounds, "iters": args.iters, "machine": machine(),
              "torch_threads": torch.get_num_threads(),
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python benchmarks/rounding_cost.py"}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
