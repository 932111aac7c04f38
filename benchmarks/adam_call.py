"""Would a leaner optimizer call pay? An interleaved A/B of Adam's call and of the step (issue 31).

Each reconstruction step ends in ``optimizer.step()`` of a fused CPU Adam (two parameter groups:
the roundings' offsets and the activation steps with their border), whose pre-hook applies
Attention Round's eq. 6. Around its two kernel calls, torch.optim runs Python on every call: the
step's profiling and hook wrappers, and ``_init_group``, which walks every parameter to gather
its gradient and state into lists. ``LeanAdam`` does the same update without that Python: the
pre-hooks, then per group one ``_foreach_add_`` on the step counts and one call of PyTorch's
private ``torch._fused_adam_`` on lists built once. This script measures what that takes off:

- **values**: one update from the same state by ``opt.step()`` and by ``LeanAdam`` (the
  parameters, both moments and the step counts) compared bit for bit, per unit;
- **the call alone**: Adam's update of a unit's parameters, ``opt.step()`` against
  ``LeanAdam``, both without the pre-hooks (eq. 6 is the same work in both; left out, the
  gradients stay as they are between calls), median over ``--rounds`` rounds of ``--calls``
  calls, in microseconds;
- **the step**: every unit of the default recipe, one reconstruction step in a bare loop
  (``calib.step.optimizer_step``, what ``BlockReconstruction`` runs) with each of the two, in
  turn within each round (which goes first alternates); medians over the rounds, summed over
  the units.

As a calibration does, the script turns off the NVML probe with which Lightning's environment
makes every ``Adam.step`` ask for a CUDA device (``speed.bare_units`` does it).

    .venv/bin/python benchmarks/adam_call.py [--model resnet20] [--rounds 8] [--steps 30]
        [--calls 300]

Writes ``benchmarks/results/adam_call_<model>.json``. ``LeanAdam`` lives only here: the
package keeps ``torch.optim.Adam`` (docs/speed.md says why).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import warnings
from functools import partial
from itertools import chain

import torch
from result_json import script_command, write_result
from speed import add_bare_loop_options, bare_units, per_iter, table_line
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.step import optimizer_step

BATCH = 64
CPU = torch.device("cpu")


class LeanAdam:
    """``opt.step()`` of a fused CPU Adam (``opt``, stepped at least once, so its state exists)
    without torch.optim's Python around the kernels: the step pre-hooks (``hooks``: the global
    ones and ``opt``'s), then per parameter group one ``_foreach_add_`` on the step counts and
    one ``_fused_adam_`` on lists of the state built here, then the post-hooks. The parameters
    without a gradient are skipped, as torch.optim skips them. ``zero_grad`` is ``opt``'s."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        if not isinstance(opt, torch.optim.Adam):
            raise ValueError(f"LeanAdam runs torch.optim.Adam, not {type(opt).__name__}")
        self.opt = opt
        self.groups = []
        for group in opt.param_groups:
            unsupported = [k for k in ("amsgrad", "maximize", "differentiable", "capturable",
                                       "decoupled_weight_decay") if group.get(k)]
            if not group.get("fused") or unsupported:
                raise ValueError("LeanAdam runs a fused Adam without "
                                 f"{', '.join(unsupported) or 'foreach or for-loop'}")
            if any(p not in opt.state for p in group["params"]):
                raise ValueError("LeanAdam needs the optimizer's state: step it once first")
            states = [opt.state[p] for p in group["params"]]
            self.groups.append((group, group["params"], [s["exp_avg"] for s in states],
                                [s["exp_avg_sq"] for s in states], [s["step"] for s in states]))

    @staticmethod
    def _update(group: dict, params: list[Tensor], exp_avgs: list[Tensor],
                exp_avg_sqs: list[Tensor], steps: list[Tensor]) -> None:
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            kept = [i for i, g in enumerate(grads) if g is not None]
            params, grads = [params[i] for i in kept], [grads[i] for i in kept]
            exp_avgs, exp_avg_sqs = [exp_avgs[i] for i in kept], [exp_avg_sqs[i] for i in kept]
            steps = [steps[i] for i in kept]
        if not params:
            return
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                           lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self, hooks: bool = True) -> None:
        if hooks:
            for hook in chain(_global_optimizer_pre_hooks.values(),
                              self.opt._optimizer_step_pre_hooks.values()):
                hook(self.opt, (), {})
        with torch.no_grad():  # as torch.optim updates: outside autograd
            for group, params, exp_avgs, exp_avg_sqs, steps in self.groups:
                self._update(group, params, exp_avgs, exp_avg_sqs, steps)
        if hooks:
            for hook in chain(self.opt._optimizer_step_post_hooks.values(),
                              _global_optimizer_post_hooks.values()):
                hook(self.opt, (), {})


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[Tensor]:
    """Every parameter and state tensor of ``opt``, in a fixed order."""
    tensors = []
    for group in opt.param_groups:
        for p in group["params"]:
            tensors.append(p)
            state = opt.state[p]
            tensors.extend(state[k] for k in ("exp_avg", "exp_avg_sq", "step"))
    return tensors


def same_update(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt.step()`` and ``LeanAdam(opt).step()`` from the same state (gradients,
    pre-hooks and all) leave every parameter, moment and step count bit for bit alike.
    ``opt`` is left as it was."""
    params = [p for g in opt.param_groups for p in g["params"]]
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    before = [t.clone() for t in _optimizer_tensors(opt)]

    def restore() -> None:
        with torch.no_grad():
            for t, saved in zip(_optimizer_tensors(opt), before, strict=True):
                t.copy_(saved)
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.clone()

    opt.step()
    torch_values = [t.clone() for t in _optimizer_tensors(opt)]
    restore()
    LeanAdam(opt).step()
    lean_values = [t.clone() for t in _optimizer_tensors(opt)]
    restore()
    return all(torch.equal(a, b) for a, b in zip(torch_values, lean_values, strict=True))


def _torch_step_without_hooks(opt: torch.optim.Optimizer) -> None:
    hooks = opt._optimizer_step_pre_hooks
    saved = dict(hooks)
    hooks.clear()
    try:
        opt.step()
    finally:
        hooks.update(saved)


def time_unit(opt: torch.optim.Optimizer, step_with, rounds: int, steps: int,
              calls: int) -> dict[str, float]:
    """Medians over ``rounds`` of: the bare-loop step with torch.optim's Adam and with
    LeanAdam (ms; ``step_with(optimizer)`` runs one), and Adam's call alone with each (µs, no
    hooks), in turn within each round."""
    lean = LeanAdam(opt)
    times: dict[str, list[float]] = {"call_torch_us": [], "call_lean_us": [],
                                     "step_torch_ms": [], "step_lean_ms": []}
    arms = [("step_torch_ms", partial(step_with, opt), steps, 1e3),
            ("step_lean_ms", partial(step_with, lean), steps, 1e3),
            ("call_torch_us", partial(_torch_step_without_hooks, opt), calls, 1e6),
            ("call_lean_us", partial(lean.step, hooks=False), calls, 1e6)]
    for round_ in range(rounds):
        # torch.optim first in even rounds, LeanAdam first in odd ones: neither always
        # runs on the warmer cache or the later host
        order = arms if round_ % 2 == 0 else [arms[1], arms[0], arms[3], arms[2]]
        for key, fn, count, unit in order:
            times[key].append(per_iter(fn, count, CPU) * unit)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(model: str, rounds: int, steps: int, calls: int, max_units: int | None = None,
            images: str = "fmnist") -> list[dict]:
    """Per unit of the default recipe: whether the two updates agree bit for bit, and the
    medians of ``time_unit``. ``images``: Fashion-MNIST calibration images and the committed
    weights, or random images and random weights (the tests; the time does not depend on
    the values)."""
    rows = []
    for u in bare_units(model, images, steps, BATCH, max_units):
        opt, losses, x, y = u.opt, u.losses, u.x, u.y
        optimizer_step(losses, opt, x, y)  # Adam's state exists from here on
        # the next step's gradients, eq. 6's inputs included, for the values' check
        opt.zero_grad()
        rec, reg = losses(x, y)
        (rec + reg).backward()
        bits = same_update(opt)

        def step_with(optimizer, losses=losses, x=x, y=y) -> None:
            optimizer_step(losses, optimizer, x, y)

        row = {"unit": u.spec.name, "same_bits": bits,
               "parameters": sum(len(g["params"]) for g in opt.param_groups),
               **time_unit(opt, step_with, rounds, steps, calls)}
        rows.append(row)
        print(table_line(row, {"unit": "", "parameters": "", "same_bits": "",
                               "call_torch_us": ".0f", "call_lean_us": ".0f",
                               "step_torch_ms": ".2f", "step_lean_ms": ".2f"}), flush=True)
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    total = {k: sum(r[k] for r in rows) for k in ("call_torch_us", "call_lean_us",
                                                  "step_torch_ms", "step_lean_ms")}
    saved_ms = (total["call_torch_us"] - total["call_lean_us"]) / 1e3
    return {**total, "call_saving_percent_of_step": 100 * saved_ms / total["step_torch_ms"],
            "step_lean_over_torch": total["step_lean_ms"] / total["step_torch_ms"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bare_loop_options(parser, "steps a timing of the step")
    parser.add_argument("--calls", type=int, default=300, help="calls a timing of the call")
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.calls) < 1:
        parser.error("--rounds, --steps and --calls: at least 1")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    print("| unit | parameters | one update bit for bit | Adam's call, torch.optim µs | "
          "LeanAdam µs | step with torch.optim ms | with LeanAdam ms |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    rows = measure(args.model, args.rounds, args.steps, args.calls, args.max_units,
                   args.images)
    total = summary(rows)
    print(f"| all units | | {all(r['same_bits'] for r in rows)} | "
          f"{total['call_torch_us']:.0f} | {total['call_lean_us']:.0f} | "
          f"{total['step_torch_ms']:.2f} | {total['step_lean_ms']:.2f} |")
    print(f"the call's saving: {total['call_saving_percent_of_step']:.1f} % of the summed "
          f"step; the step with LeanAdam / with torch.optim: "
          f"{total['step_lean_over_torch']:.3f}")
    result = {"model": args.model, "images": args.images, "batch": BATCH,
              "rounds": args.rounds, "steps": args.steps, "calls": args.calls,
              "units": rows, "total": total, "machine": machine(),
              "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
              "command": script_command("adam_call.py", argv)}
    write_result(args.out / f"adam_call_{args.model}.json", result)


if __name__ == "__main__":
    main()
