"""Would compiled loops for the activation border pay? An interleaved A/B of the step (issue 31).

AQuant's border (``attnround_pl.quant.act_border._BorderRound``, every activation quantizer of
the default recipe) is six passes over the activation forward and about ten tensors' worth of
reads backward in eager PyTorch, and torch.profiler puts it at 23-36 % of a small model's step
(docs/speed.md). This script compiles the same Function as two C loops, one pass each way
(``KERNEL_SOURCE``), with the system's C compiler (``$CC``, else ``cc``; ``-O3 -march=native``,
no fast-math, no FMA contraction, OpenMP), and measures what that takes off the step:

- **values**: the forward's output and the input's gradient are the eager Function's bit for
  bit; the step's and the border's gradients are sums, which the loop takes in an order of its
  own (16 interleaved partial sums a row), so they differ by float rounding (printed);
- **the border alone**: forward + backward at each activation shape of the model's units,
  eager against compiled (median of ``--rounds`` rounds of ``--steps`` calls);
- **the step**: every unit of the default recipe, one reconstruction step in a bare loop
  (``calib.step.optimizer_step``, what ``BlockReconstruction`` runs) with the eager border,
  with the compiled one, and the float unit's forward + backward, in turn within each round, so
  the host's drift reaches all three alike; medians over the rounds, summed over the units.

    .venv/bin/python benchmarks/border_kernel.py [--model resnet20] [--rounds 8] [--steps 30]

Writes ``benchmarks/results/border_kernel_<model>.json``. The compiled loops live only here:
the package keeps the eager Function (docs/speed.md says why).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from result_json import script_command, write_result
from speed import add_bare_loop_options, bare_units, per_iter
from torch import Tensor

from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.step import optimizer_step
from attnround_pl.quant.act_border import AQuantBorder, _effective_parts, _shrink_backward
from attnround_pl.quant.act_quant import ActQuantizer

FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-shared",
         "-fPIC")
BATCH = 64
CPU = torch.device("cpu")

KERNEL_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#define MIN_PARALLEL 65536
#define LANES 16

/* rows are (sample, channel) pairs of a contiguous (N, C, ...) tensor */
void border_forward(const float *x, float *xt, float *out, const float *a, const float *b,
                    float s, float lo, float hi, int64_t rows, int64_t channels, int64_t inner,
                    int threads) {
  #pragma omp parallel for schedule(static) num_threads(threads) if (rows * inner >= MIN_PARALLEL)
  for (int64_t r = 0; r < rows; r++) {
    const float aj = a[r % channels], bj = b[r % channels];
    const float *xp = x + r * inner;
    float *tp = xt + r * inner, *op = out + r * inner;
    for (int64_t t = 0; t < inner; t++) {
      float v = xp[t] / s;             /* torch.div */
      v = v < lo ? lo : v;             /* clamp_ */
      v = v > hi ? hi : v;
      tp[t] = v;
      op[t] = rintf(v * aj - bj) * s;  /* mul, sub_, round_ (half to even), mul_ */
    }
  }
}

void border_backward(const float *grad, const float *xt, const float *out, float *gx,
                     float *sums, float lo, float hi, int64_t rows, int64_t inner, int threads) {
  #pragma omp parallel for schedule(static) num_threads(threads) if (rows * inner >= MIN_PARALLEL)
  for (int64_t r = 0; r < rows; r++) {
    const float *g = grad + r * inner, *t = xt + r * inner, *o = out + r * inner;
    float *d = gx + r * inner;
    if (inner < 2 * LANES) {  /* short rows (a Linear's input: 1): one partial sum each */
      float a = 0, b = 0, c = 0, e = 0;
      for (int64_t i = 0; i < inner; i++) {
        const float gi = g[i], ti = t[i];
        const float di = (ti <= lo || ti >= hi) ? 0.0f : gi;
        d[i] = di;
        a += gi * ti;
        b += gi;
        c += gi * o[i];
        e += di * ti;
      }
      sums[4 * r] = a;
      sums[4 * r + 1] = b;
      sums[4 * r + 2] = c;
      sums[4 * r + 3] = e;
      continue;
    }
    float s_gt[LANES] = {0}, s_g[LANES] = {0}, s_go[LANES] = {0}, s_dt[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= inner; i += LANES) {
      for (int l = 0; l < LANES; l++) {
        const float gi = g[i + l], ti = t[i + l];
        const float di = (ti <= lo || ti >= hi) ? 0.0f : gi;  /* hardtanh_backward */
        d[i + l] = di;
        s_gt[l] += gi * ti;
        s_g[l] += gi;
        s_go[l] += gi * o[i + l];
        s_dt[l] += di * ti;
      }
    }
    for (int l = 0; i < inner; i++, l++) {
      const float gi = g[i], ti = t[i];
      const float di = (ti <= lo || ti >= hi) ? 0.0f : gi;
      d[i] = di;
      s_gt[l] += gi * ti;
      s_g[l] += gi;
      s_go[l] += gi * o[i];
      s_dt[l] += di * ti;
    }
    for (int w = LANES / 2; w > 0; w /= 2) {
      for (int l = 0; l < w; l++) {
        s_gt[l] += s_gt[l + w];
        s_g[l] += s_g[l + w];
        s_go[l] += s_go[l + w];
        s_dt[l] += s_dt[l + w];
      }
    }
    sums[4 * r] = s_gt[0];
    sums[4 * r + 1] = s_g[0];
    sums[4 * r + 2] = s_go[0];
    sums[4 * r + 3] = s_dt[0];
  }
}
"""


class Kernels:
    """The compiled loops, with their C signatures."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        ptr, f32, i64, i32 = ctypes.c_void_p, ctypes.c_float, ctypes.c_int64, ctypes.c_int
        self.forward = lib.border_forward
        self.forward.restype = None
        self.forward.argtypes = [ptr, ptr, ptr, ptr, ptr, f32, f32, f32, i64, i64, i64, i32]
        self.backward = lib.border_backward
        self.backward.restype = None
        self.backward.argtypes = [ptr, ptr, ptr, ptr, ptr, f32, f32, i64, i64, i32]


def build_kernels(folder: Path) -> Kernels:
    """Compiles ``KERNEL_SOURCE`` in ``folder``; stops with one line where it cannot."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise SystemExit(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH: set CC")
    source, target = folder / "border_kernel.c", folder / "border_kernel.so"
    source.write_text(KERNEL_SOURCE)
    done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise SystemExit(f"{compiler} could not build the kernels: {last}")
    return Kernels(target)


def _rows(x: Tensor) -> tuple[int, int, int]:
    channels = x.shape[1]
    rows = x.shape[0] * channels
    return rows, channels, x.numel() // rows


class CompiledBorderRound(torch.autograd.Function):
    """``_BorderRound`` (same arguments, values and gradients; see the module docstring) with
    its passes over the activation in the compiled loops. Needs contiguous float32 CPU
    tensors of at least two dimensions, as every activation of the embedded models is."""

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, k: Tensor, c: Tensor, reach: float, qmin: int,
                qmax: int, g: float, kernels: Kernels) -> Tensor:
        k_eff, c_eff, ctx.parts = _effective_parts(x, k, c, reach)
        x = x.contiguous()
        slope, offset = (1 - k_eff).contiguous(), c_eff.contiguous()
        xt, out = torch.empty_like(x), torch.empty_like(x)
        rows, channels, inner = _rows(x)
        kernels.forward(x.data_ptr(), xt.data_ptr(), out.data_ptr(), slope.data_ptr(),
                        offset.data_ptr(), float(step), float(qmin), float(qmax), rows,
                        channels, inner, torch.get_num_threads())
        ctx.save_for_backward(xt, out, step, k, c)
        ctx.bounds = (qmin, qmax, g, reach)
        ctx.kernels = kernels
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        xt, out, step, k, c = ctx.saved_tensors
        qmin, qmax, g, reach = ctx.bounds
        grad = grad.contiguous()
        grad_x = torch.empty_like(grad)
        rows, channels, inner = _rows(grad)
        sums = torch.empty(grad.shape[0], channels, 4)
        ctx.kernels.backward(grad.data_ptr(), xt.data_ptr(), out.data_ptr(), grad_x.data_ptr(),
                             sums.data_ptr(), float(qmin), float(qmax), rows, inner,
                             torch.get_num_threads())
        per_channel = sums.sum(0)
        scalars = per_channel[:, 2:].sum(0)
        neg_step = -step
        grad_k, grad_c = per_channel[:, 0] * neg_step, per_channel[:, 1] * neg_step
        grad_step = (scalars[0] / step - scalars[1]) * g
        if ctx.parts is not None:
            grad_k, grad_c = _shrink_backward(k, c, reach, ctx.parts, grad_k, grad_c)
        return grad_x, grad_step, grad_k, grad_c, None, None, None, None, None


@contextmanager
def compiled_border(kernels: Kernels) -> Iterator[None]:
    """Within: every ``AQuantBorder`` quantizes through ``CompiledBorderRound``."""
    eager = AQuantBorder.quantize

    def quantize(self: AQuantBorder, x: Tensor, step: Tensor, qmin: int, qmax: int,
                 g: float) -> Tensor:
        return CompiledBorderRound.apply(x, step, self.k, self.c, self.reach, qmin, qmax, g,
                                         kernels)

    AQuantBorder.quantize = quantize
    try:
        yield
    finally:
        AQuantBorder.quantize = eager


def _border_call(x: Tensor, step: Tensor, border: AQuantBorder, grad: Tensor
                 ) -> list[Tensor]:
    for t in (x, step, border.k, border.c):
        t.grad = None
    out = border.quantize(x, step, -4, 3, 0.01)
    out.backward(grad)
    return [out.detach(), x.grad, step.grad, border.k.grad, border.c.grad]


def check_values(kernels: Kernels, shapes: list[tuple[int, ...]]) -> list[dict]:
    """Per shape: whether the output and the input's gradient are the eager Function's bit for
    bit, and the largest relative difference of the step's, k's and c's gradients; with a
    border learned far enough that its shrink is at work on some channels."""
    rows = []
    for shape in shapes:
        gen = torch.Generator().manual_seed(len(rows))
        x0 = 2 * torch.randn(shape, generator=gen)
        grad = torch.randn(shape, generator=gen)
        border = AQuantBorder(shape[1], reach=4.0)
        with torch.no_grad():
            border.k.copy_(0.1 * torch.randn(shape[1], generator=gen))
            border.c.copy_(0.3 * torch.randn(shape[1], generator=gen))
        results = []
        for compiled in (False, True):
            x, step = x0.clone().requires_grad_(), torch.tensor(0.37, requires_grad=True)
            if compiled:
                with compiled_border(kernels):
                    results.append(_border_call(x, step, border, grad))
            else:
                results.append(_border_call(x, step, border, grad))
        (eager, fast) = results

        def same_bits(a: Tensor, b: Tensor) -> bool:
            return torch.equal(a.view(torch.int32), b.view(torch.int32))

        def rel(a: Tensor, b: Tensor) -> float:
            return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))

        rows.append({"shape": list(shape), "output_bits_equal": same_bits(eager[0], fast[0]),
                     "input_grad_bits_equal": same_bits(eager[1], fast[1]),
                     "step_grad_rel": rel(eager[2], fast[2]), "k_grad_rel": rel(eager[3], fast[3]),
                     "c_grad_rel": rel(eager[4], fast[4])})
    return rows


def _ms_per_call(fn: Callable[[], object], steps: int) -> float:
    """Milliseconds a call of ``fn`` over ``steps`` calls, after one untimed (speed.py's)."""
    return per_iter(fn, steps, CPU) * 1000.0


def border_shapes(qmodel: torch.nn.Module, x: Tensor) -> list[tuple[int, ...]]:
    """The input shapes of the model's activation quantizers with a border, in order."""
    shapes: list[tuple[int, ...]] = []
    hooks = [q.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
             for q in qmodel.modules() if isinstance(q, ActQuantizer) and q.border is not None]
    with torch.no_grad():
        qmodel(x)
    for hook in hooks:
        hook.remove()
    return shapes


def time_border(kernels: Kernels, shapes: list[tuple[int, ...]], rounds: int, steps: int
                ) -> list[dict]:
    """Per distinct shape: the border's forward + backward, eager and compiled, in turn."""
    rows = []
    for shape in dict.fromkeys(shapes):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).requires_grad_()
        step = torch.tensor(0.37, requires_grad=True)
        border = AQuantBorder(shape[1], reach=4.0)
        grad = torch.randn(shape, generator=gen)
        call = partial(_border_call, x, step, border, grad)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(rounds):
            times["eager"].append(_ms_per_call(call, steps))
            with compiled_border(kernels):
                times["compiled"].append(_ms_per_call(call, steps))
        eager, fast = statistics.median(times["eager"]), statistics.median(times["compiled"])
        rows.append({"shape": list(shape), "calls_a_step": shapes.count(shape),
                     "eager_ms": eager, "compiled_ms": fast})
    return rows


def time_steps(model: str, kernels: Kernels, rounds: int, steps: int, max_units: int | None,
               images: str = "fmnist") -> list[dict]:
    """Per unit of the default recipe: median ms of a bare-loop step with the eager border,
    with the compiled one, and of the float unit's forward + backward, in turn each round.
    ``images``: Fashion-MNIST calibration images and the committed weights, or random images
    and random weights (the tests; the time does not depend on the values)."""
    rows = []
    for u in bare_units(model, images, steps, BATCH, max_units):
        spec, x, y = u.spec, u.x, u.y
        step = partial(optimizer_step, u.losses, u.opt, x, y)
        float_call = u.float_call()
        times: dict[str, list[float]] = {"eager": [], "compiled": [], "float": []}
        for _ in range(rounds):
            times["eager"].append(_ms_per_call(step, steps))
            with compiled_border(kernels):
                times["compiled"].append(_ms_per_call(step, steps))
            times["float"].append(_ms_per_call(float_call, steps))
        row = {"unit": spec.name, **{f"{k}_ms": statistics.median(v) for k, v in times.items()}}
        rows.append(row)
        print(f"| {row['unit']} | {row['eager_ms']:.2f} | {row['compiled_ms']:.2f} | "
              f"{row['float_ms']:.2f} | {row['compiled_ms'] / row['eager_ms']:.3f} |", flush=True)
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    eager = sum(r["eager_ms"] for r in rows)
    fast = sum(r["compiled_ms"] for r in rows)
    floor = sum(r["float_ms"] for r in rows)
    return {"eager_ms": eager, "compiled_ms": fast, "float_ms": floor,
            "compiled_over_eager": fast / eager, "ratio_eager": eager / floor,
            "ratio_compiled": fast / floor}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bare_loop_options(parser, "steps (calls) a timing")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps: at least 1")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        kernels = build_kernels(Path(folder))
        from attnround_pl.models import build_model
        from attnround_pl.quant import QuantConfig, calibrate_activations, quantize_model

        probe = quantize_model(build_model(args.model, weights=None), QuantConfig())
        images = torch.randn(BATCH, 1, 28, 28)
        calibrate_activations(probe, [images])
        shapes = border_shapes(probe, images)
        values = check_values(kernels, sorted(set(shapes)))
        for row in values:
            print(f"values {row['shape']}: output and input gradient bit for bit: "
                  f"{row['output_bits_equal'] and row['input_grad_bits_equal']}; largest "
                  f"relative difference of the step's, k's, c's gradients: "
                  f"{row['step_grad_rel']:.1e}, {row['k_grad_rel']:.1e}, {row['c_grad_rel']:.1e}")
        border = time_border(kernels, shapes, args.rounds, args.steps)
        print("| activation shape | calls a step | border fwd+bwd eager ms | compiled ms |")
        print("| --- | ---: | ---: | ---: |")
        for row in border:
            print(f"| {tuple(row['shape'])} | {row['calls_a_step']} | {row['eager_ms']:.3f} | "
                  f"{row['compiled_ms']:.3f} |")
        print("| unit | step, eager border ms | step, compiled border ms | float fwd+bwd ms | "
              "compiled / eager |")
        print("| --- | ---: | ---: | ---: | ---: |")
        steps = time_steps(args.model, kernels, args.rounds, args.steps, args.max_units,
                           args.images)
    total = summary(steps)
    print(f"| all units | {total['eager_ms']:.2f} | {total['compiled_ms']:.2f} | "
          f"{total['float_ms']:.2f} | {total['compiled_over_eager']:.3f} |")
    print(f"ratio to the float step: eager {total['ratio_eager']:.2f}x, compiled "
          f"{total['ratio_compiled']:.2f}x")
    result = {"model": args.model, "images": args.images, "batch": BATCH,
              "rounds": args.rounds, "steps": args.steps,
              "values": values, "border": border, "units": steps, "total": total,
              "machine": machine(), "torch_threads": torch.get_num_threads(),
              "command": script_command("border_kernel.py", argv)}
    write_result(args.out / f"border_kernel_{args.model}.json", result)


if __name__ == "__main__":
    main()
