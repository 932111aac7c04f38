"""Scale (and zero point) initialisation by minimising ``||x - x_hat||^2`` under round-to-nearest
(or the mean ``|x - x_hat|^p`` of another exponent ``p``, ``quant.scale_search_p``).

Candidates are clipping ratios ``r`` of the observed range; each row (one output channel,
or one whole tensor) keeps the ratio with the smallest squared error. The search is coarse to
fine (a coarse sweep of ``[min_ratio, 1]``, then a fine sweep around each row's best coarse
ratio), loops over candidates only and is vectorised over rows: no Python loop over channels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .grid import UniformGrid

COARSE_RATIOS = 20
FINE_RATIOS = 20
MIN_RATIO = 0.05


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, grid: UniformGrid) -> Tensor:
    """Round-to-nearest fake quantization ``s * (clip(round(x / s) + z, qmin, qmax) - z)``."""
    q = torch.clamp(torch.round(x / scale) + zero_point, grid.qmin, grid.qmax)
    return scale * (q - zero_point)


def range_to_qparams(
    lo: Tensor, hi: Tensor, grid: UniformGrid, affine: bool
) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map the range ``[lo, hi]`` (``lo <= 0 <= hi``) onto ``grid``.

    ``affine`` grids are unsigned with a zero point; otherwise the zero point is 0 and a signed
    grid is symmetric about it (an unsigned one starts at it).
    """
    tiny = torch.finfo(torch.float32).tiny
    if affine:
        scale = ((hi - lo) / (grid.qmax - grid.qmin)).clamp_min(tiny)
        zero_point = torch.clamp(torch.round(-lo / scale) + grid.qmin, grid.qmin, grid.qmax)
    else:
        reach = torch.maximum(-lo, hi) if grid.signed else hi
        scale = (reach / grid.qmax).clamp_min(tiny)
        zero_point = torch.zeros_like(scale)
    return scale, zero_point


def search_qparams(
    x: Tensor,
    grid: UniformGrid,
    affine: bool,
    num_coarse: int = COARSE_RATIOS,
    num_fine: int = FINE_RATIOS,
    min_ratio: float = MIN_RATIO,
    p: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Per-row scale and zero point of ``x`` (shape ``rows x elements``) with the least
    ``mean |x - x_hat|^p`` (``p`` = 2: the MSE; BRECQ's code uses 2.4).

    Returns two tensors of shape ``(rows,)``. The ratio 1.0 (plain min-max) is always among the
    candidates, so the result is never worse than min-max.
    """
    if x.dim() != 2:
        raise ValueError(
            f"search_qparams expects a 2-D tensor (rows x elements), got {tuple(x.shape)}"
        )
    x = x.detach().float()
    lo_full = x.amin(dim=1).clamp_max(0.0)
    hi_full = x.amax(dim=1).clamp_min(0.0)
    best_err = torch.full_like(lo_full, float("inf"))
    best_ratio = torch.ones_like(lo_full)
    best_scale = torch.ones_like(lo_full)
    best_zp = torch.zeros_like(lo_full)

    def consider(ratio: Tensor) -> None:
        nonlocal best_err, best_ratio, best_scale, best_zp
        scale, zp = range_to_qparams(lo_full * ratio, hi_full * ratio, grid, affine)
        diff = fake_quantize(x, scale[:, None], zp[:, None], grid) - x
        err = (diff.pow_(2) if p == 2.0 else diff.abs_().pow_(p)).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, ratio, best_ratio)
        best_scale = torch.where(better, scale, best_scale)
        best_zp = torch.where(better, zp, best_zp)

    coarse = torch.linspace(min_ratio, 1.0, num_coarse)
    for ratio in coarse:
        consider(ratio.expand_as(lo_full))
    half_width = float(coarse[1] - coarse[0]) if num_coarse > 1 else 0.0
    centre = best_ratio.clone()
    for offset in torch.linspace(-half_width, half_width, num_fine):
        consider((centre + offset).clamp(min_ratio, 1.0))
    return best_scale, best_zp
