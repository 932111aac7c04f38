"""BestState: the lowest-error state a unit reached while learning (``recon.keep_best_every``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BestState:
    """Copies of a unit's learnable parameters (rounding offsets, activation steps, AQuant
    borders) at the checkpoint with the lowest output MSE offered so far.

    Every ``every`` steps the caller measures the unit as it would freeze and ``offer``s the
    MSE; the last step's state is offered too, and ``restore`` puts the best one back. Copies
    are taken only when a checkpoint is better, on the parameters' own device.
    """

    def __init__(self, params: list[nn.Parameter], every: int) -> None:
        if every < 1:
            raise ValueError(f"every={every} must be >= 1")
        self.params = params
        self.every = every
        self.mse = math.inf
        self.step: int | None = None
        self._saved: list[Tensor] = []

    def due(self, done: int, steps: int) -> bool:
        """Whether a checkpoint falls in the ``steps`` steps that ended with step ``done``
        (counted from 1): a multiple of ``every`` in ``(done - steps, done]``."""
        return done // self.every > (done - steps) // self.every

    @torch.no_grad()
    def offer(self, mse: float, step: int) -> bool:
        """Keep the current parameters if ``mse`` (the state after ``step`` steps) is lower
        than every earlier offer's; returns whether they were kept."""
        if not mse < self.mse:  # a NaN is never kept
            return False
        self.mse, self.step = mse, step
        self._saved = [p.detach().clone() for p in self.params]
        return True

    @torch.no_grad()
    def restore(self) -> int | None:
        """Put the best offered state back into the parameters; its step (None: no offer,
        nothing changed)."""
        if self.step is None:
            return None
        for p, saved in zip(self.params, self._saved, strict=True):
            p.copy_(saved)
        return self.step
