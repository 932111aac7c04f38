"""Rounding functions: one interface, six implementations.

A rounding function maps ``x = w / s`` (weights in grid-step units, zero point not yet added)
to integer grid offsets, clipped to ``[lo, hi]`` where ``lo = qmin - z`` and ``hi = qmax - z``.
The weight quantizer then returns ``s * q`` (eq. 3 of the Attention Round paper).

- ``forward(x, lo, hi)`` is what the quantized layer uses while calibrating (differentiable
  in the rounding's own parameters where it has any).
- ``hard_codes(x, lo, hi)`` gives the final integers a frozen layer keeps.
- ``regularizer()`` is the extra loss term (AdaRound only) and ``set_progress(t)`` tells the
  rounding how far the optimisation is, ``t`` in ``[0, 1]`` (AdaRound's beta annealing).

Each rounding's own settings are a small dataclass beside it (``AttentionSettings``,
``AdaRoundSettings``; ``NoSettings`` for the roundings without any), named by its
``settings_class`` attribute and built from ``QuantConfig.rounding_args`` by
``rounding_settings``. A new rounding is one class here (with its settings and
``from_settings``) added to ``ROUNDINGS``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import is_finite_number
from .errors import QuantConfigError

ALPHA_INITS = ("gaussian", "zero")  # AttentionSettings.init
SETTINGS_KEY = "quant.rounding_args"  # where the chosen rounding's settings sit in the config


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


@dataclass(frozen=True)
class NoSettings:
    """The settings of a rounding that has none (nearest, floor, ceil, stochastic: stochastic
    rounding takes its seed from ``quant.seed``)."""

    def validate(self, where: str = SETTINGS_KEY) -> NoSettings:
        return self


class Rounding(nn.Module):
    """Base class: subclasses give ``grid_value`` (unclipped, possibly soft grid value).

    ``settings_class`` is the dataclass of the rounding's own settings
    (``QuantConfig.rounding_args`` are checked against its fields); ``from_settings`` builds
    the rounding of one layer from them and the layer's seed."""

    name: ClassVar[str] = ""
    learnable: ClassVar[bool] = False
    has_regularizer: ClassVar[bool] = False  # whether ``regularizer`` can be non-zero
    settings_class: ClassVar[type] = NoSettings

    @classmethod
    def from_settings(cls, settings: Any, seed: int = 0) -> Rounding:
        return cls()

    def init_state(self, x: Tensor) -> None:
        """Set up per-element state from the weights in step units; called once, before learning."""

    def grid_value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.clamp(self.grid_value(x), lo, hi)

    def scaled(self, x: Tensor, lo: Tensor, hi: Tensor, scale: Tensor) -> Tensor:
        """``scale * self(x, lo, hi)``: the weight quantizer's learning path (a rounding may
        compute it in fewer operations, with the same values and gradients)."""
        return scale * self(x, lo, hi)

    @torch.no_grad()
    def hard_codes(self, x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """Integer offsets (as a float tensor) that a frozen layer keeps."""
        return torch.clamp(torch.round(self.grid_value(x)), lo, hi)

    def regularizer(self) -> Tensor:
        return torch.zeros(())

    def set_progress(self, t: float) -> None:
        """Fraction ``t`` of the optimisation done; only schedules care."""

    def set_learning(self, learning: bool) -> None:
        """Whether a unit's reconstruction is learning this rounding now (its weight
        quantizer's ``set_learning``): a rounding may compute another value while it learns
        (Attention Round's ``relax``) than the one it freezes to."""

    def finish_gradient(self) -> None:
        """Turn the summed raw gradient of the parameters into the rounding's own (call after
        backward, before the optimizer step; see AttentionRounding)."""

    @classmethod
    def finish_gradients(cls, roundings: Sequence[Rounding]) -> None:
        """``finish_gradient`` of each of ``roundings`` (all of this class); a class may do
        them together (AttentionRounding: multi-tensor operations)."""
        for rounding in roundings:
            rounding.finish_gradient()

    def extra_repr(self) -> str:
        return self.name


class NearestRounding(Rounding):
    """Round half to even (``torch.round``), the grid point nearest to ``x``."""

    name = "nearest"

    def grid_value(self, x: Tensor) -> Tensor:
        return torch.round(x)


class FloorRounding(Rounding):
    """The largest grid point not above ``x``."""

    name = "floor"

    def grid_value(self, x: Tensor) -> Tensor:
        return torch.floor(x)


class CeilRounding(Rounding):
    """The smallest grid point not below ``x``."""

    name = "ceil"

    def grid_value(self, x: Tensor) -> Tensor:
        return torch.ceil(x)


class _FixedDecision(Rounding):
    """Shared by roundings that choose floor or floor + 1 per element once, at ``init_state``."""

    up: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("up", torch.zeros(0))

    def _check_shape(self, x: Tensor) -> None:
        if self.up.shape != x.shape:
            raise RuntimeError(
                f"{self.name} rounding was initialised for shape {tuple(self.up.shape)}, "
                f"called with {tuple(x.shape)}"
            )

    def grid_value(self, x: Tensor) -> Tensor:
        self._check_shape(x)
        return torch.floor(x) + self.up


class StochasticRounding(_FixedDecision):
    """Floor or ceil with probability of the fractional distance, sampled once from ``seed``.

    ``E[q] = x``: unbiased in expectation; the same seed gives the same codes.
    """

    name = "stochastic"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    @classmethod
    def from_settings(cls, settings: NoSettings, seed: int = 0) -> StochasticRounding:
        return cls(seed=seed)

    @torch.no_grad()
    def init_state(self, x: Tensor) -> None:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        frac = (x - torch.floor(x)).detach().cpu()
        self.up = (torch.rand(frac.shape, generator=gen) < frac).to(x.dtype).to(x.device)


@dataclass(frozen=True)
class AdaRoundSettings:
    """AdaRound's settings (Nagel et al. 2020; BRECQ's and QDrop's code use the same).

    Args:
        reg_weight: lambda, the weight of the rounding regulariser (>= 0).
        beta_start: beta of the regulariser when it starts (after the warm-up).
        beta_end: beta at the end of the unit's optimisation (annealed linearly).
        warmup: fraction of the optimisation without the regulariser, in [0, 1).
    """

    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2

    def validate(self, where: str = SETTINGS_KEY) -> AdaRoundSettings:
        if not 0.0 <= self.warmup < 1.0:
            raise QuantConfigError(f"{_key(where, 'warmup')}={self.warmup} must be in [0, 1)")
        if self.reg_weight < 0:
            raise QuantConfigError(f"{_key(where, 'reg_weight')}={self.reg_weight} must be >= 0")
        return self


class AdaRounding(Rounding):
    """AdaRound (Nagel et al. 2020): ``q = floor(x) + h(V)`` with the rectified sigmoid
    ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``.

    ``V`` starts where ``h(V)`` equals the fractional part of ``x``, so the soft value first
    reproduces ``x`` exactly. Regulariser ``lambda * sum(1 - |2 h(V) - 1|^beta)`` is off during the
    first ``warmup`` fraction of the run, then ``beta`` anneals linearly from ``beta_start`` to
    ``beta_end``. Hard codes use ``h(V) >= 0.5``.
    """

    name = "adaround"
    learnable = True
    has_regularizer = True
    settings_class = AdaRoundSettings
    zeta = 1.1
    gamma = -0.1

    def __init__(
        self,
        reg_weight: float = 0.01,
        beta_start: float = 20.0,
        beta_end: float = 2.0,
        warmup: float = 0.2,
    ) -> None:
        super().__init__()
        self.reg_weight = reg_weight
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.warmup = warmup
        self.beta = beta_start
        self.reg_active = False
        self.v = nn.Parameter(torch.zeros(0))

    @classmethod
    def from_settings(cls, settings: AdaRoundSettings, seed: int = 0) -> AdaRounding:
        return cls(**dataclasses.asdict(settings))

    @torch.no_grad()
    def init_state(self, x: Tensor) -> None:
        frac = (x - torch.floor(x)).detach()
        p = ((frac - self.gamma) / (self.zeta - self.gamma)).clamp(1e-6, 1 - 1e-6)
        self.v = nn.Parameter(torch.log(p) - torch.log1p(-p))

    def h(self) -> Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (self.zeta - self.gamma) + self.gamma, 0, 1)

    def grid_value(self, x: Tensor) -> Tensor:
        return torch.floor(x.detach()) + self.h()

    @torch.no_grad()
    def hard_codes(self, x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.clamp(torch.floor(x) + (self.h() >= 0.5).to(x.dtype), lo, hi)

    def set_progress(self, t: float) -> None:
        self.reg_active = t >= self.warmup
        rel = max(0.0, (t - self.warmup) / max(1e-12, 1.0 - self.warmup))
        self.beta = self.beta_start + (self.beta_end - self.beta_start) * min(1.0, rel)

    def regularizer(self) -> Tensor:
        if not self.reg_active:
            return torch.zeros((), device=self.v.device)
        return self.reg_weight * (1 - (2 * self.h() - 1).abs().pow(self.beta)).sum()


def standard_normal_cdf(x: Tensor) -> Tensor:
    """Phi(x) = 0.5 + 0.5 erf(x / sqrt 2) (eq. 7 inside eq. 6)."""
    return 0.5 + 0.5 * torch.erf(x / math.sqrt(2.0))


def attention_gradient(grad: Tensor, alpha: Tensor, tau: float, overshoot: Tensor) -> Tensor:
    """Eq. 6, in place on ``grad`` (``dL/dq``, summed over the batch), returned:
    ``dL/dalpha = dL/dq * Phi(alpha / tau)`` where ``dL/dq > 0``, else times ``1 - Phi``,
    written ``Phi(sign(dL/dq) * alpha / tau)`` (``Phi`` is symmetric about 0). Past a clipping
    bound only the part that pulls alpha back inside passes: ``overshoot`` is ``q - round(x +
    alpha)``, positive below the lower bound, negative above the upper, 0 inside, and a
    gradient with the same sign as it would push alpha further out."""
    blocked = torch.mul(grad, overshoot) > 0
    toward = torch.sign(grad).mul_(alpha)  # alpha, or -alpha where dL/dq < 0
    if tau > 0:  # Phi(t) = (1 + erf(t / sqrt 2)) / 2
        factor = torch.erf(toward.mul_(1.0 / (tau * math.sqrt(2.0)))).add_(1.0).mul_(0.5)
    else:  # the tau -> 0 limit of Phi(alpha / tau): the unit step, 1/2 at alpha = 0
        factor = torch.sign(toward).add_(1.0).mul_(0.5)
    return grad.mul_(factor).masked_fill_(blocked, 0.0)


def attention_gradients(grads: list[Tensor], alphas: list[Tensor], widths: list[float],
                        overshoots: list[Tensor]) -> None:
    """``attention_gradient`` in place on each of ``grads`` (every width > 0), as multi-tensor
    (``torch._foreach_*``) operations in the same order, so the values are the same bit for
    bit; the blocked elements are multiplied by 0 where the one-tensor form fills 0."""
    keep = torch._foreach_mul(grads, overshoots)  # > 0 where blocked
    torch._foreach_sign_(keep)
    torch._foreach_clamp_min_(keep, 0.0)  # 1 where blocked, else 0
    torch._foreach_neg_(keep)
    torch._foreach_add_(keep, 1.0)  # 0 where blocked, else 1
    factor = torch._foreach_sign(grads)
    torch._foreach_mul_(factor, alphas)
    torch._foreach_mul_(factor, [1.0 / (w * math.sqrt(2.0)) for w in widths])
    torch._foreach_erf_(factor)
    torch._foreach_add_(factor, 1.0)
    torch._foreach_mul_(factor, 0.5)
    torch._foreach_mul_(grads, factor)
    torch._foreach_mul_(grads, keep)


@dataclass(frozen=True)
class AttentionSettings:
    """Attention Round's settings.

    Args:
        tau: the standard deviation of alpha's initialisation ``N(0, tau^2)`` and the width
            of eq. 6's ``Phi(alpha / tau)``, in grid steps (>= 0; the paper's 0.5; 0 means
            round-to-nearest: alpha starts at 0 and never moves away).
        init: where alpha starts: ``"gaussian"`` draws it from ``N(0, tau^2)`` (the paper);
            ``"zero"`` starts every weight at round-to-nearest and leaves ``tau`` only the
            width of eq. 6 (not in the paper; issue 34's lever: Adam moves alpha about ``lr``
            a step, so at lr 4e-4 a 2k-step run cannot bring back the third of the weights a
            ``N(0, 0.5^2)`` start puts off their nearest grid point).
        tau_end: None (the paper) keeps eq. 6's width at ``tau`` for the whole run; a number
            moves it linearly from ``tau`` to ``tau_end`` over a unit's steps (not in the paper;
            issue 34's lever: a shrinking width makes moves away from the start ever harder,
            as AdaRound's annealed beta hardens its rounding). ``init`` still draws with ``tau``.
        relax: 0 (the paper) learns on the hard value ``round(x + alpha)`` with eq. 6's
            straight-through gradient. A number > 0 learns on a soft rounding of ``x + alpha``
            of that hardness instead, hardening geometrically to ``relax_end`` over a unit's
            steps, and freezes to the hard value as always (not in the paper; issue 34's
            hybrid with AdaRound's relaxation: the loss sees the weight it differentiates, and
            alpha still reaches any grid value). The soft rounding is Agustsson and Theis'
            (2020) ``floor(v) + 1/2 + tanh(a r) / (2 tanh(a / 2))``, ``r = v - floor(v) - 1/2``:
            the identity as ``a`` -> 0, rounding as ``a`` grows; eq. 6 shapes its gradient.
        relax_end: the hardness at a unit's last soft step (with ``relax`` > 0; at 40 the
            soft value is within 0.01 of the hard one but for weights within 0.06 of a border).
        relax_until: the fraction of a unit's steps learned on the soft value (with ``relax``
            > 0; 1, the default: all of them). The hardness reaches ``relax_end`` there, and the
            steps after it learn on the hard value with eq. 6's straight-through gradient, as
            the paper: the soft value to find where weights should go, the hard one to polish
            what the layer freezes to.
    """

    tau: float = 0.5
    init: str = "gaussian"
    tau_end: float | None = None
    relax: float = 0.0
    relax_end: float = 40.0
    relax_until: float = 1.0

    def validate(self, where: str = SETTINGS_KEY) -> AttentionSettings:
        check_tau(self.tau, _key(where, "tau"))
        if self.tau_end is not None:
            check_tau(self.tau_end, _key(where, "tau_end"))
        for name in ("relax", "relax_end"):
            value = getattr(self, name)
            if not is_finite_number(value) or value < 0:
                raise QuantConfigError(f"{_key(where, name)}={value!r} must be a number >= 0")
        if self.relax > 0 and self.relax_end < self.relax:
            raise QuantConfigError(f"{_key(where, 'relax_end')}={self.relax_end} must be at "
                                   f"least relax={self.relax}: the rounding hardens over a "
                                   "unit's steps")
        until = self.relax_until
        if not is_finite_number(until) or not 0 < until <= 1:
            raise QuantConfigError(f"{_key(where, 'relax_until')}={until!r} must be a fraction "
                                   "of a unit's steps in (0, 1]")
        if self.relax == 0:  # relax_end and relax_until shape a soft rounding there is not
            for name in ("relax_end", "relax_until"):
                value = getattr(self, name)
                if value != _RELAX_DEFAULTS[name]:
                    raise QuantConfigError(f"{_key(where, name)}={value!r} shapes the soft "
                                           f"rounding, which relax=0 leaves off: set "
                                           f"{_key(where, 'relax')} > 0 or leave {name} out")
        if self.init not in ALPHA_INITS:
            raise QuantConfigError(f"{_key(where, 'init')}={self.init!r}: one of "
                                   f"{', '.join(ALPHA_INITS)}")
        return self


# relax_end's and relax_until's defaults, the only values allowed with relax 0
_RELAX_DEFAULTS = {"relax_end": AttentionSettings.relax_end,
                   "relax_until": AttentionSettings.relax_until}


class AttentionRounding(Rounding):
    """Attention Round (eqs. 3-7): ``q = clip(round(x + alpha), l, h)``, ``alpha`` trainable.

    ``alpha`` starts from ``N(0, tau^2)`` with ``tau`` in grid-step units. The paper writes
    ``N(0, (tau/s)^2)`` with ``tau`` in weight units; for real weights (steps of ~1e-2) that makes
    the paper's ``tau = 0.5`` dozens of steps wide, so we read ``tau`` in step units. The forward
    pass is always the hard rounded value; backward replaces ``dq/dalpha`` by ``Phi(alpha / tau)``
    where ``dL/dq > 0`` and by ``1 - Phi(alpha / tau)`` otherwise (eq. 6): moves away from the
    initial value get weaker gradients the further they go, moves back get stronger ones.

    ``tau = 0``: ``alpha`` starts at 0 (round-to-nearest) and ``Phi`` becomes its limit, the unit
    step, so ``alpha`` can only drift back toward 0, never away: tau = 0 stays at nearest.
    Past a clipping bound, gradients that would push ``alpha`` further out are zeroed, the ones
    that pull it back pass, so a weight parked on ``l`` or ``h`` can still return.

    Eq. 6 depends on the sign of ``dL/dq``, so it must see the whole batch's gradient: backward
    leaves the raw ``dL/dq`` in ``alpha.grad`` and ``finish_gradient`` (called after backward,
    and under DDP after the gradients of all ranks are summed) applies eq. 6 in place.
    ``attnround_pl.quant.finish_rounding_gradients(model)`` does it for a whole model.
    """

    name = "attention"
    learnable = True
    settings_class = AttentionSettings

    def __init__(self, tau: float = 0.5, seed: int = 0, init: str = "gaussian",
                 tau_end: float | None = None, relax: float = 0.0,
                 relax_end: float = 40.0, relax_until: float = 1.0) -> None:
        super().__init__()
        # keys as given: tau=...
        AttentionSettings(tau, init, tau_end, relax, relax_end, relax_until).validate(where="")
        self.tau = float(tau)  # alpha's initial spread
        self.init = init
        self.tau_end = None if tau_end is None else float(tau_end)
        self.width = self.tau  # eq. 6's width now (moves to tau_end with set_progress)
        self.relax, self.relax_end = float(relax), float(relax_end)
        self.hardness = self.relax  # the soft rounding's now (moves to relax_end)
        self.relax_until = float(relax_until)
        self.soft = self.relax > 0  # learning on the soft value now (see relax_until)
        self.learning = False  # see set_learning: the soft rounding only while learning
        self.seed = seed
        self.alpha = nn.Parameter(torch.zeros(0))
        self._overshoot: Tensor | None = None  # q - round(x + alpha) of the last forward

    @classmethod
    def from_settings(cls, settings: AttentionSettings, seed: int = 0) -> AttentionRounding:
        return cls(tau=settings.tau, seed=seed, init=settings.init, tau_end=settings.tau_end,
                   relax=settings.relax, relax_end=settings.relax_end,
                   relax_until=settings.relax_until)

    def set_progress(self, t: float) -> None:
        t = min(1.0, max(0.0, t))
        if self.tau_end is not None:
            self.width = self.tau + (self.tau_end - self.tau) * t
        if self.relax > 0:
            until = self.relax_until
            self.soft = until >= 1.0 or t < until
            self.hardness = self.relax * (self.relax_end / self.relax) ** min(1.0, t / until)

    def set_learning(self, learning: bool) -> None:
        self.learning = learning

    @torch.no_grad()
    def init_state(self, x: Tensor) -> None:
        if self.init == "zero":
            self.alpha = nn.Parameter(torch.zeros_like(x))
            return
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float32) * self.tau
        self.alpha = nn.Parameter(noise.to(device=x.device, dtype=x.dtype))

    def forward(self, x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """``q`` with the gradient ``dL/dq`` passed to alpha unchanged (x gets none)."""
        return self._apply_rounding(x, lo, hi, None)

    def scaled(self, x: Tensor, lo: Tensor, hi: Tensor, scale: Tensor) -> Tensor:
        """``scale * self(x, lo, hi)`` in one autograd Function (``_ScaledAttentionRound``):
        for a finite alpha the values, overshoot and gradient of the composed autograd form
        ``scale * (q + (alpha - alpha))`` bit for bit, in about half its operations and one
        autograd node where it builds three (issue 31: a small layer's fixed cost a step)."""
        return self._apply_rounding(x, lo, hi, scale)

    def _apply_rounding(self, x: Tensor, lo: Tensor, hi: Tensor,
                        scale: Tensor | None) -> Tensor:
        if self.learning and self.soft:
            value, overshoot = _SoftAttentionRound.apply(self.alpha, x.detach(), lo, hi, scale,
                                                         self.hardness)
        else:
            value, overshoot = _ScaledAttentionRound.apply(self.alpha, x.detach(), lo, hi,
                                                           scale)
        # a plain attribute (Module.__setattr__ costs more than the subtraction)
        self.__dict__["_overshoot"] = overshoot
        return value

    @torch.no_grad()
    def finish_gradient(self) -> None:
        if self.alpha.grad is None or self._overshoot is None:
            return
        attention_gradient(self.alpha.grad, self.alpha, self.width, self._overshoot)

    @classmethod
    @torch.no_grad()
    def finish_gradients(cls, roundings: Sequence[Rounding]) -> None:
        """Eq. 6 on every rounding of a unit at once (``attention_gradients``) where its
        width is > 0, one by one where it is 0: the same values, in about a dozen calls for
        all the layers where one layer took ten (issue 31)."""
        together = [r for r in roundings if r.alpha.grad is not None
                    and r._overshoot is not None and r.width > 0]
        if len(together) < 2:
            together = []
        else:
            attention_gradients([r.alpha.grad for r in together], [r.alpha for r in together],
                                [r.width for r in together], [r._overshoot for r in together])
        done = {id(r) for r in together}
        for rounding in roundings:
            if id(rounding) not in done:
                rounding.finish_gradient()

    def grid_value(self, x: Tensor) -> Tensor:
        return torch.round(x.detach() + self.alpha)

    def extra_repr(self) -> str:
        init = "" if self.init == "gaussian" else f", init={self.init}"
        end = "" if self.tau_end is None else f", tau_end={self.tau_end}"
        relax = "" if self.relax == 0 else f", relax={self.relax}->{self.relax_end}"
        if self.relax > 0 and self.relax_until < 1:
            relax += f" until {self.relax_until}"
        return f"{self.name}, tau={self.tau}{init}{end}{relax}"


class _ScaledAttentionRound(torch.autograd.Function):
    """``(scale * q, q - raw)`` with ``raw = round(x + alpha)``, ``q = clip(raw, lo, hi)``
    (``scale`` None: ``(q, q - raw)``, ``AttentionRounding.forward``); the gradient to alpha
    is ``grad * scale`` (``grad``), what autograd gives the composed ``scale * (q + (alpha -
    alpha))`` (``tests/quant/test_rounding.py`` compares them bit for bit). ``maximum`` and
    ``minimum`` clip as ``clamp`` does but for the sign of a zero, and ``+ 0.0`` (the composed
    form's ``alpha - alpha``) makes every zero positive in both; on the CPU, ``clamp`` with
    tensor bounds took about 2.5 times their time on a layer's weights."""

    @staticmethod
    def forward(ctx, alpha: Tensor, x: Tensor, lo: Tensor, hi: Tensor,
                scale: Tensor | None) -> tuple[Tensor, Tensor]:
        raw = torch.add(x, alpha).round_()
        q = torch.maximum(raw, lo)
        torch.minimum(q, hi, out=q)
        overshoot = torch.sub(q, raw)
        value = q.add_(0.0) if scale is None else q.add_(0.0).mul_(scale)
        ctx.mark_non_differentiable(overshoot)
        ctx.scaled = scale is not None
        if ctx.scaled:
            ctx.save_for_backward(scale)
        return value, overshoot

    @staticmethod
    def backward(ctx, grad: Tensor, _overshoot: Tensor):
        grad_alpha = torch.mul(grad, ctx.saved_tensors[0]) if ctx.scaled else grad
        return grad_alpha, None, None, None, None


class _SoftAttentionRound(torch.autograd.Function):
    """``(scale * q, overshoot)`` as ``_ScaledAttentionRound``, with ``q`` the soft
    rounding of ``v = x + alpha`` at ``hardness`` ``a`` (``AttentionSettings.relax``), clipped
    to ``[lo, hi]``: ``floor(v) + 1/2 + tanh(a r) / (2 tanh(a / 2))``, ``r = v - floor(v) -
    1/2``. The gradient to alpha is ``grad * scale`` times the soft rounding's slope ``a (1 -
    tanh(a r)^2) / (2 tanh(a / 2))`` (clipped or not, as the hard path passes it; eq. 6 then
    blocks what pushes further out). ``overshoot`` is the hard value's, ``clip(round(v)) -
    round(v)``, what eq. 6 reads."""

    @staticmethod
    def forward(ctx, alpha: Tensor, x: Tensor, lo: Tensor, hi: Tensor, scale: Tensor | None,
                hardness: float) -> tuple[Tensor, Tensor]:
        v = torch.add(x, alpha)
        raw = torch.round(v)
        overshoot = torch.minimum(torch.maximum(raw, lo), hi).sub_(raw)
        floor = torch.floor(v)
        bend = torch.sub(v, floor).sub_(0.5).mul_(hardness).tanh_()
        norm = 2.0 * math.tanh(hardness / 2.0)
        q = torch.div(bend, norm).add_(floor).add_(0.5)
        q = torch.minimum(torch.maximum(q, lo), hi)
        value = q if scale is None else q.mul_(scale)
        ctx.mark_non_differentiable(overshoot)
        ctx.slope = (hardness, norm)
        if scale is None:
            ctx.save_for_backward(bend)
        else:
            ctx.save_for_backward(bend, scale)
        return value, overshoot

    @staticmethod
    def backward(ctx, grad: Tensor, _overshoot: Tensor):
        hardness, norm = ctx.slope
        bend = ctx.saved_tensors[0]
        slope = torch.mul(bend, bend).neg_().add_(1.0).mul_(hardness / norm)
        grad_alpha = torch.mul(grad, slope)
        if len(ctx.saved_tensors) > 1:
            grad_alpha.mul_(ctx.saved_tensors[1])
        return grad_alpha, None, None, None, None, None


def check_tau(tau: float, key: str = "tau") -> float:
    if not is_finite_number(tau):
        raise QuantConfigError(f"{key}={tau!r} must be a finite number >= 0 (grid-step units)")
    if tau < 0:
        raise QuantConfigError(
            f"{key}={tau} must be >= 0 (grid-step units; 0 means round-to-nearest)"
        )
    return float(tau)


ROUNDINGS: dict[str, type[Rounding]] = {
    cls.name: cls
    for cls in (
        NearestRounding,
        FloorRounding,
        CeilRounding,
        StochasticRounding,
        AdaRounding,
        AttentionRounding,
    )
}


def rounding_class(name: str) -> type[Rounding]:
    """The rounding registered as ``name``; an unknown name is one QuantConfigError."""
    if name not in ROUNDINGS:
        raise QuantConfigError(
            f"unknown rounding {name!r}; valid names: {', '.join(sorted(ROUNDINGS))}"
        )
    return ROUNDINGS[name]


def setting_names(name: str) -> list[str]:
    """The keys ``rounding_args`` takes for the rounding ``name``."""
    return [f.name for f in dataclasses.fields(rounding_class(name).settings_class)]


def _setting_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the field's type: numbers for float fields (a string that reads as one,
    as a command line gives ``1e-3`` or ``nan``, is read), integers for int fields."""
    if hint is float or hint is int:
        number = value
        if isinstance(value, str):
            try:
                number = float(value) if hint is float else int(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            kind = "a number" if hint is float else "an integer"
            raise QuantConfigError(f"{key}={value} must be {kind}")
        if hint is int and isinstance(number, float):
            if not number.is_integer():
                raise QuantConfigError(f"{key}={value} must be an integer")
            number = int(number)
        if not math.isfinite(number):
            raise QuantConfigError(f"{key}={value} must be a finite number")
        return hint(number)
    if hint is bool and not isinstance(value, bool):
        raise QuantConfigError(f"{key}={value} must be true or false")
    if hint is str and not isinstance(value, str):
        raise QuantConfigError(f"{key}={value} must be a string")
    return value


def rounding_settings(
    name: str, args: Mapping[str, Any] | None = None, where: str = SETTINGS_KEY
) -> Any:
    """The settings of rounding ``name`` from ``args`` (None or missing keys: the defaults),
    checked: a key the rounding does not take is refused naming the rounding and its keys;
    values are read as their field's type. ``where`` is the key ``args`` sit under, for the
    messages (``quant.rounding_args.tau=nan must be a finite number``)."""
    cls = rounding_class(name).settings_class
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise QuantConfigError(
            f"{where}={args!r} must be a mapping of {name}'s settings ({{key: value}}) or null"
        )
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [str(k) for k in args if k not in valid]
    if unknown:
        takes = f"valid keys: {', '.join(valid)}" if valid else "it takes none"
        others = [other for other, rounding in ROUNDINGS.items() if other != name
                  and unknown[0] in {f.name for f in dataclasses.fields(rounding.settings_class)}]
        hint = (f" ({unknown[0]} is {others[0]}'s: after changing quant.rounding give its own "
                "rounding_args, or null for its defaults)") if others and where else ""
        prefix = f"{where}: " if where else ""
        raise QuantConfigError(
            f"{prefix}rounding {name!r} has no setting {unknown[0]!r}; {takes}{hint}"
        )
    hints = typing.get_type_hints(cls)
    values = {k: _setting_value(v, hints[k], _key(where, k)) for k, v in args.items()}
    return cls(**values).validate(where)


def build_rounding(name: str, settings: Any, seed: int = 0) -> Rounding:
    """One layer's rounding from checked settings (``rounding_settings``) and its seed."""
    return rounding_class(name).from_settings(settings, seed)


def make_rounding(name: str, *, seed: int = 0, **args: Any) -> Rounding:
    """Build a rounding by name with its own settings as keywords (``tau`` for attention;
    ``reg_weight``, ``beta_start``, ``beta_end``, ``warmup`` for adaround); ``seed`` is for
    stochastic and attention. A keyword the rounding does not take is refused."""
    return build_rounding(name, rounding_settings(name, args, where=""), seed)
