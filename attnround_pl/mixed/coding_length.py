"""Lossy coding length of a layer's weights (eq. 12 of the Attention Round paper)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import SettingError


def weight_vectors(weight: Tensor) -> Tensor:
    """The layer's weights as W (n x m): one n-element column per output channel."""
    return weight.detach().reshape(weight.shape[0], -1).T


def coding_length(weight: Tensor, eps2: float) -> float:
    """``L(W) = 1/2 log2 det(I + n / (m eps^2) W W^T)`` (eq. 12), in bits.

    Computed in float64 with slogdet through the smaller Gram matrix: ``det(I_n + c W W^T)``
    equals ``det(I_m + c W^T W)``.
    """
    if not eps2 > 0:
        raise SettingError(f"eps2={eps2} must be > 0")
    w = weight_vectors(weight).double()
    n, m = w.shape
    c = n / (m * eps2)
    gram = w.T @ w if m <= n else w @ w.T
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    sign, logdet = torch.linalg.slogdet(eye + c * gram)
    if sign <= 0:  # I + c G is positive definite; anything else is numerical breakdown
        raise ArithmeticError("coding length: determinant is not positive")
    return 0.5 * float(logdet) / math.log(2.0)
