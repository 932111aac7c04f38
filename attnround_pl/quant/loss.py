"""Reconstruction objectives for a unit's output."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(pred: Tensor, target: Tensor, p: float = 2.0,
                        weight: Tensor | None = None) -> Tensor:
    """Squared error summed over channels (dim 1), averaged over batch and positions; with
    ``p`` other than 2, ``|pred - target|^p`` in its place (BRECQ's ``lp_loss``, which their
    activation stage runs at p = 2.4). ``weight`` (the output's shape): each element's error is
    multiplied by it first (BRECQ's Fisher-weighted error, ``calib.fisher``).

    BRECQ's convention; it keeps AdaRound's regulariser weight (0.01) on the scale it was tuned
    for. For a 2-D output (a Linear layer) this is the per-sample squared error, averaged.
    Computed as the whole sum of squares (one fused kernel forward and backward, where
    ``(pred - target).pow(2).sum(1).mean()`` passes over the output four times) divided by the
    number of (sample, position) pairs; the two agree to float rounding.
    """
    positions = pred.numel() // pred.shape[1] if pred.dim() > 1 else 1
    if weight is not None:
        diff = pred - target
        error = diff * diff if p == 2.0 else diff.abs().pow(p)
        total = (error * weight).sum()
    elif p == 2.0:
        total = F.mse_loss(pred, target, reduction="sum")
    else:
        total = (pred - target).abs().pow(p).sum()
    return total / max(1, positions)


def output_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Plain mean squared error over all elements (what reports show)."""
    return (pred - target).pow(2).mean()


def prediction_difference(logits: Tensor, float_logits: Tensor,
                          temperature: float = 4.0) -> Tensor:
    """PD-Quant's prediction difference: ``KL(softmax(float_logits / T) || softmax(logits /
    T))``, summed over classes and averaged over the batch (``reduction='batchmean'``, as
    their ``block_recon.py``). ``logits`` come from the network's float tail applied to a
    quantized unit's output, ``float_logits`` from the float network."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=1),
                    F.softmax(float_logits / temperature, dim=1), reduction="batchmean")
