"""GraphedStep: one whole reconstruction step recorded once as a CUDA graph, then replayed.

On a GPU an eager step of a small unit is bound by the host issuing its ~160 kernels (the
quantizers' elementwise chains, the convolutions, eq. 6, Adam), not by the GPU running them.
A CUDA graph issues them all in one launch. The step is static (a fixed batch size, the batch
copied into fixed input tensors, Adam with ``capturable=True``), so it is recorded once per
unit and replayed every step: the same operations on the same tensors as the eager step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..quant import active_roundings
from .step import Losses, optimizer_step, step_losses

WARMUP_STEPS = 3


class GraphedStep:
    """``step(x, y)``: ``calib.step.optimizer_step`` (zero the gradients, ``rec = ||unit(x) -
    y||^2``, ``reg`` (the rounding regulariser), backward of ``rec + reg``, ``optimizer.step()``
    over the learned parameters, eq. 6 first by its pre-hook), replayed from a CUDA graph;
    returns ``(rec, reg)``, tensors the next step overwrites.

    The first call records the graph: ``WARMUP_STEPS`` eager steps on a side stream (cuDNN's
    choices, the optimizer's state, the allocator's pool), after which the learned parameters
    and the optimizer's state are put back as they were, so the replayed run learns what the
    eager one would. Everything that changes from step to step must live in tensors: a
    Python number read by the step (a learning-rate schedule, AdaRound's beta) would be frozen
    at its recorded value, and the callers refuse those settings.
    """

    def __init__(self, unit: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_p: float = 2.0) -> None:
        if not all(group.get("capturable", False) for group in optimizer.param_groups):
            raise ValueError("GraphedStep needs an optimizer made with capturable=True")
        self.unit = unit
        self.optimizer = optimizer
        self.loss_p = loss_p  # the output error's exponent (``quant.reconstruction_loss``)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.roundings = active_roundings(unit)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.rec: Tensor | None = None
        self.reg: Tensor | None = None

    def __call__(self, x: Tensor, y: Tensor) -> Losses:
        if self.graph is None:
            self._record(x, y)
        if x.shape != self.x.shape:
            raise RuntimeError(f"a CUDA graph step was recorded for batches of "
                               f"{tuple(self.x.shape)}, called with {tuple(x.shape)}")
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.rec, self.reg

    def _step(self) -> Losses:
        return optimizer_step(self._losses, self.optimizer, self.x, self.y, set_to_none=False)

    def _losses(self, x: Tensor, y: Tensor) -> Losses:
        return step_losses(self.unit, self.roundings, x, y, p=self.loss_p)

    def _record(self, x: Tensor, y: Tensor) -> None:
        if x.device.type != "cuda":
            raise RuntimeError(f"recon.cuda_graph needs the unit on a CUDA device, not {x.device}")
        self.x, self.y = x.clone(), y.clone()
        saved = [p.detach().clone() for p in self.params]
        for p in self.params:  # the graph accumulates into gradients that already exist
            p.grad = torch.zeros_like(p)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._step()
        torch.cuda.current_stream(x.device).wait_stream(side)
        with torch.no_grad():  # undo the warm-up: the replayed run starts where eager would
            for p, value in zip(self.params, saved, strict=True):
                p.copy_(value)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, Tensor):
                        value.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.rec, self.reg = self._step()
