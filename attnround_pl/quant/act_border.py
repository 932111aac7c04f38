"""AQuant's adaptive rounding border for activations, in the form this project derived.

AQuant (arXiv 2208.11945) publishes neither code nor full equations; this form is ours, from its
abstract. In step units ``x~ = x / s``, ``n = floor(x~)``, ``frac = x~ - n``, the code is
``n + 1[frac >= b]`` (nearest: ``b = 0.5``) with a border that depends on the activation:

    b(x~) = 0.5 + k * x~ + c            (k, c learned per input channel)

``k`` absorbs the multiplicative error of the already-quantized weights (for one product w*x with
quantized weight w + dw the balancing border is 0.5 + (dw/w)(n + 0.5), close to 0.5 + (dw/w) x~),
``c`` the propagated error. (AQuant's "global error" idea was tried in a cheap form, ``c``
gaining a learned multiple of the per-sample channel mean of ``x~``; it measured no gain and
was removed after commit 0cbc7a9, see docs/methods.md.)

``b`` is kept inside (0, 1) by reparametrisation, not clamping: the inputs are clipped to the grid,
``|x~| <= R``, so ``|b - 0.5| <= |k| R + |c|``; when that bound passes ``0.5 - eps`` the
learned (k, c) are scaled down together to meet it. With the effective parameters the
rounding equals the folded form ``round((1 - k) x~ - c)`` for every input, a per-channel scale
and offset before rounding, which deploys as part of the requantisation (dequantise with the
unchanged step). Exact ties go to the even code in
both forms, as ``torch.round`` and ONNX do, so ``k = c = 0`` is round-to-nearest bit for bit.
Learning uses a straight-through estimator: backward treats the code as ``x~ - b + 0.5``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BORDERS = ("nearest", "aquant")
BORDER_MARGIN = 1e-3  # b stays in [margin, 1 - margin]


class AQuantBorder(nn.Module):
    """Learned per-channel border ``0.5 + k x~ + c``; starts at nearest."""

    def __init__(self, channels: int, reach: float) -> None:
        super().__init__()
        self.reach = float(reach)  # max |x~| after clipping to the grid
        self.k = nn.Parameter(torch.zeros(channels))
        self.c = nn.Parameter(torch.zeros(channels))

    def effective(self) -> tuple[Tensor, Tensor]:
        """(k, c) scaled per channel so that the border stays in [margin, 1 - margin]."""
        bound = self.k.abs() * self.reach + self.c.abs()
        shrink = torch.clamp((0.5 - BORDER_MARGIN) / bound.clamp_min(1e-12), max=1.0)
        return self.k * shrink, self.c * shrink

    def _per_channel(self, p: Tensor, x: Tensor) -> Tensor:
        return p.reshape(1, -1, *([1] * (x.dim() - 2)))

    def _slope_offset(self, xt: Tensor) -> tuple[Tensor, Tensor]:
        k, c = self.effective()
        return self._per_channel(k, xt), self._per_channel(c, xt)

    def border(self, xt: Tensor) -> Tensor:
        k, off = self._slope_offset(xt)
        return 0.5 + k * xt + off

    def forward(self, xt: Tensor) -> Tensor:
        """Codes ``n + 1[frac >= b]`` (ties to even), straight-through to ``x~ - b + 0.5``."""
        b = self.border(xt.detach())
        hard = explicit_codes(xt.detach(), b.detach())
        soft = xt - b + 0.5
        return (hard - soft).detach() + soft

    @torch.no_grad()
    def folded_value(self, xt: Tensor) -> Tensor:
        """``(1 - k) x~ - c``: what the deployable form rounds."""
        k, off = self._slope_offset(xt)
        return (1 - k) * xt - off

    @torch.no_grad()
    def folded(self, xt: Tensor) -> Tensor:
        """The deployable form ``round((1 - k) x~ - c)``."""
        return torch.round(self.folded_value(xt))


def explicit_codes(xt: Tensor, b: Tensor) -> Tensor:
    """``n + 1[frac > b]``, and at an exact tie (frac == b) the even one of n, n + 1."""
    n = torch.floor(xt)
    frac = xt - n
    odd = torch.remainder(n, 2) == 1
    up = (frac > b) | ((frac == b) & odd)
    return n + up.to(xt.dtype)
