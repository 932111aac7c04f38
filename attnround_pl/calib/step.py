"""One reconstruction step, the code every loop runs: the Lightning module's (eager), the CUDA
graph's recording and the speed benchmark's bare loop.

Eq. 6 is not called here: the optimizer applies it before each of its steps
(``quant.shape_gradients_before_step``), so a loop cannot skip it or apply it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..quant import Rounding, reconstruction_loss, rounding_regularizer

Losses = tuple[Tensor, Tensor]  # (reconstruction loss, rounding regulariser)


def step_losses(forward: Callable[[Tensor], Tensor], roundings: Sequence[Rounding], x: Tensor,
                y: Tensor, weight: float = 1.0, p: float = 2.0,
                fisher: Tensor | None = None,
                output_term: Callable[[Tensor, Tensor], Tensor] | None = None,
                logits: Tensor | None = None) -> Losses:
    """``(weight * ||forward(x) - y||_p^p, regulariser)``: ``weight`` is this rank's share of
    the global batch under DDP (1 in one process); ``p`` the error's exponent and ``fisher``
    the error's element weights (see ``quant.reconstruction_loss``). With ``output_term``,
    ``output_term(forward(x), logits)`` (PD-Quant's term, ``calib.output_term``; ``logits``
    the float network's output on the batch) is added to the error before the weighting."""
    out = forward(x)
    rec = reconstruction_loss(out, y, p, fisher)
    if output_term is not None:
        rec = rec + output_term(out, logits)
    if weight != 1.0:
        rec = rec * weight
    return rec, rounding_regularizer(roundings)


def optimizer_step(losses: Callable[[Tensor, Tensor], Losses], optimizer: torch.optim.Optimizer,
                   x: Tensor, y: Tensor, set_to_none: bool = True) -> Losses:
    """Zero the gradients, ``losses(x, y)``, backward of their sum, ``optimizer.step()``;
    returns the losses. ``set_to_none=False`` keeps the gradient tensors (a CUDA graph needs
    them to stay where it recorded them)."""
    optimizer.zero_grad(set_to_none=set_to_none)
    rec, reg = losses(x, y)
    (rec + reg).backward()
    optimizer.step()
    return rec, reg
