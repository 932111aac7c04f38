"""Reconstruction objectives for a unit's output."""

from __future__ import annotations

from torch import Tensor


def reconstruction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over channels (dim 1), averaged over batch and positions.

    BRECQ's convention; it keeps AdaRound's regulariser weight (0.01) on the scale it was tuned
    for. For a 2-D output (a Linear layer) this is the per-sample squared error, averaged.
    """
    return (pred - target).pow(2).sum(dim=1).mean()


def output_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Plain mean squared error over all elements (what reports show)."""
    return (pred - target).pow(2).mean()
