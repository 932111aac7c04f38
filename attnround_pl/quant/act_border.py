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
rule equals the folded form ``round((1 - k) x~ - c)`` in exact arithmetic, a per-channel scale
and offset before rounding, which deploys as part of the requantisation (dequantise with the
unchanged step). The quantizer computes the folded form, as the ONNX export does (since
2026-12-04, issue 31: six passes over the tensor forward where the rule took eleven, and about
half its CPU time forward + backward, ``benchmarks/rounding_cost.py``);
in float the two differ only for a value within float rounding of a border, as the export's
own arithmetic does. Exact ties go to the even code (``torch.round`` and ONNX round half to
even), so ``k = c = 0`` is round-to-nearest bit for bit.
Learning uses a straight-through estimator: backward treats the code as ``x~ - b + 0.5``.
``AQuantBorder.quantize`` is the activation quantizer's path: one autograd Function
(``_BorderRound``) with the values and gradients of composing ``clamp(x / s)``, ``forward``
and ``* s`` with LSQ's step gradient (to float rounding; ``tests/quant/test_act_border.py``
compares them), at a fraction of the composed graph's CPU time.
"""

from __future__ import annotations

from typing import NamedTuple

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
        shrink = _shrink(self.k, self.c, self.reach)
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
        """Codes ``round((1 - k) x~ - c)`` (the folded form, ties to even), straight-through
        to ``x~ - b + 0.5`` with ``b`` read at the detached ``x~`` (``x~``'s gradient is 1,
        as LSQ's)."""
        k, off = self._slope_offset(xt)
        soft = xt - k * xt.detach() - off
        return (self.folded(xt.detach()) - soft).detach() + soft

    def quantize(self, x: Tensor, step: Tensor, qmin: int, qmax: int, g: float) -> Tensor:
        """``s * codes(clamp(x / s, qmin, qmax))`` with this border, LSQ's gradient for the
        step (scaled by ``g``) and the straight-through gradients of ``forward`` for ``x``, k
        and c: what the activation quantizer runs (``_BorderRound``)."""
        return _BorderRound.apply(x, step, self.k, self.c, self.reach, qmin, qmax, g)

    @torch.no_grad()
    def folded_value(self, xt: Tensor) -> Tensor:
        """``(1 - k) x~ - c``: what the deployable form rounds."""
        k, off = self._slope_offset(xt)
        return (1 - k) * xt - off

    @torch.no_grad()
    def folded(self, xt: Tensor) -> Tensor:
        """The deployable form ``round((1 - k) x~ - c)``."""
        return torch.round(self.folded_value(xt))


def _bound(k: Tensor, c: Tensor, reach: float) -> Tensor:
    """``|k| reach + |c|`` per channel: how far the border can move from 0.5."""
    return (k.abs() * reach).add_(c.abs())


def _shrink(k: Tensor, c: Tensor, reach: float) -> Tensor:
    """The per-channel factor ``min(1, (0.5 - margin) / (|k| reach + |c|))`` that keeps the
    border in [margin, 1 - margin] (``AQuantBorder.effective``)."""
    return _shrink_parts(_bound(k, c, reach)).shrink


def _shrink_is_idle(x: Tensor, bound: Tensor) -> bool:
    """Whether the CPU may skip the shrink: it is 1 on every channel, with no gradient, where
    the largest ``bound = |k| reach + |c|`` is below 0.5 - margin by more than float rounding
    (then ``k * shrink`` is ``k`` bit for bit). Its per-channel operations, forward and
    backward, are a measurable part of a small layer's step (issue 31); reading the maximum
    on a GPU would wait for the device, so a GPU always computes them."""
    return x.device.type == "cpu" and float(bound.max()) < (0.5 - BORDER_MARGIN) * (1 - 1e-6)


class _ShrinkParts(NamedTuple):
    """What ``_shrink`` computes on the way, kept for its backward (``_shrink_backward``)."""

    shrink: Tensor
    at_work: Tensor  # where ``(0.5 - margin) / bound < 1`` (clamp passes no gradient at 1)
    recip_sq: Tensor  # ``(1 / max(bound, 1e-12))^2``


def _shrink_parts(bound: Tensor) -> _ShrinkParts:
    """The shrink from ``bound`` (``_bound``), with what its backward needs; ``_shrink``,
    ``effective`` and ``_BorderRound`` all compute it here."""
    recip = bound.clamp_min(1e-12).reciprocal()
    ratio = recip * (0.5 - BORDER_MARGIN)  # what ``float / tensor`` computes
    return _ShrinkParts(ratio.clamp(max=1.0), ratio < 1, recip * recip)


def _shrink_backward(k: Tensor, c: Tensor, reach: float, parts: _ShrinkParts, grad_k: Tensor,
                     grad_c: Tensor) -> tuple[Tensor, Tensor]:
    """The raw parameters' gradients from the effective ones' (``k * shrink``, ``c *
    shrink``): autograd's own formulas for ``_shrink``'s operations (mul, clamp, the
    reciprocal's ``-grad * r^2``, abs), in its order, so the values are autograd's bit for
    bit (``tests/quant/test_act_border.py``), in about a dozen per-channel operations where
    autograd's graph took about thirty a quantizer and step (issue 31). Where the shrink is
    not at work the clamp passes no gradient (a ``bound`` under 1e-12 is never at work)."""
    pulled = torch.mul(grad_k, k).add_(torch.mul(grad_c, c))  # d loss / d shrink
    grad_bound = torch.where(parts.at_work, pulled.mul_(0.5 - BORDER_MARGIN).neg_()
                             .mul_(parts.recip_sq), 0.0)
    out_k = torch.mul(grad_k, parts.shrink).add_(grad_bound.mul(reach).mul_(torch.sgn(k)))
    out_c = torch.mul(grad_c, parts.shrink).add_(grad_bound.mul_(torch.sgn(c)))
    return out_k, out_c


def _effective_parts(x: Tensor, k: Tensor, c: Tensor, reach: float
                     ) -> tuple[Tensor, Tensor, _ShrinkParts | None]:
    """The effective ``(k, c)`` for quantizing ``x``, with the shrink's parts its backward
    needs (``_shrink_backward``), or None where the shrink is idle. On the CPU, where it is
    idle on every channel (every border starts so), its per-channel operations forward and
    backward are skipped: a quantizer's fixed cost is a large part of a small model's step
    (issue 31); the values are the same."""
    bound = _bound(k, c, reach)
    if _shrink_is_idle(x, bound):
        return k, c, None
    parts = _shrink_parts(bound)
    return k * parts.shrink, c * parts.shrink, parts


def _channel_sum(t: Tensor) -> Tensor:
    """``t`` summed over every axis but 1: over the positions (axis 2 on), then over the
    samples; a Linear's input has no positions, and summing over that one-element axis cost
    several times the sum over the samples on the CPU (the values are the same)."""
    n, channels = t.shape[0], t.shape[1]
    if t.numel() == n * channels:
        return t.reshape(n, channels).sum(0)
    return t.reshape(n, channels, -1).sum(2).sum(0)


class _BorderRound(torch.autograd.Function):
    """``s * round((1 - k) x~ - c)``, ``x~ = clamp(x / s, qmin, qmax)`` (``k``, ``c``: the
    effective per-channel parameters, axis 1 of ``x``, from the raw ones and ``reach`` as
    ``AQuantBorder.effective`` gives them): the border's folded form, as the ONNX export
    deploys it. Gradients as composing ``clamp(x / s)``, ``effective``,
    ``AQuantBorder.forward`` and ``* s`` gives them (straight-through, the code read as
    ``(1 - k) x~ - c``):

    - input: ``grad`` where ``qmin < x / s < qmax``, else 0 (``hardtanh_backward``, as LSQ);
    - step: ``g * sum(grad * (code - x / s * inside))``, LSQ's, from two dot products;
    - effective ``k``: ``-s * sum(grad * x~)`` and ``c``: ``-s * sum(grad)`` over every axis
      but 1, then through the shrink to the raw parameters (``_shrink_backward``).

    Forward writes two tensors, ``x~`` (clipped in place) and the output (the folded value,
    rounded and scaled in place), and saves them; backward reads the clipped ``x~`` for the
    input's mask (inside the range it equals ``x / s``, outside its gradient is 0 either way)
    and for ``k``'s gradient, and writes one tensor, ``grad * x~`` for ``k``, then the input's
    gradient into it: as many tensors as LSQ's rounding writes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, k: Tensor, c: Tensor, reach: float, qmin: int,
                qmax: int, g: float) -> Tensor:
        k_eff, c_eff, ctx.parts = _effective_parts(x, k, c, reach)
        xt = torch.div(x, step).clamp_(qmin, qmax)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        out = torch.mul(xt, (1 - k_eff).view(shape)).sub_(c_eff.view(shape)).round_().mul_(step)
        ctx.save_for_backward(xt, out, step, k, c)
        ctx.bounds = (qmin, qmax, g, reach)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        xt, out, step, k, c = ctx.saved_tensors
        qmin, qmax, g, reach = ctx.bounds
        need_x, need_step, need_k, need_c = ctx.needs_input_grad[:4]
        grad_x = grad_step = grad_k = grad_c = None
        spare = None
        if need_k or need_c:
            neg_step = -step
        if need_k:
            spare = torch.mul(grad, xt)
            grad_k = _channel_sum(spare).mul_(neg_step)
        if need_c:
            grad_c = _channel_sum(grad).mul_(neg_step)
        if need_x or need_step:  # written into k's product when there is one: one tensor fewer
            grad_x = (torch.ops.aten.hardtanh_backward(grad, xt, qmin, qmax) if spare is None
                      else torch.ops.aten.hardtanh_backward.grad_input(
                          grad, xt, qmin, qmax, grad_input=spare))
        if need_step:  # d(code s)/ds: code - x/s inside the range, code outside
            grad_step = (torch.dot(grad.reshape(-1), out.reshape(-1)) / step
                         - torch.dot(grad_x.reshape(-1), xt.reshape(-1))) * g
        if ctx.parts is not None and (need_k or need_c):
            grad_k, grad_c = _shrink_backward(
                k, c, reach, ctx.parts, torch.zeros_like(k) if grad_k is None else grad_k,
                torch.zeros_like(c) if grad_c is None else grad_c)
        return (grad_x if need_x else None), grad_step, grad_k, grad_c, None, None, None, None
