import math

import pytest
import torch

from attnround_pl.quant import (
    ROUNDINGS,
    AdaRounding,
    AttentionRounding,
    QuantConfigError,
    make_rounding,
)
from attnround_pl.quant.rounding import standard_normal_cdf

LO, HI = torch.tensor(-8.0), torch.tensor(7.0)


def _apply(name, x, **kw):
    r = make_rounding(name, **kw)
    r.init_state(x)
    return r, r(x, LO, HI)


def test_six_roundings_registered():
    assert sorted(ROUNDINGS) == sorted(
        ["nearest", "floor", "ceil", "stochastic", "adaround", "attention"]
    )


def test_fixed_roundings_on_hand_made_tensor():
    x = torch.tensor([-9.3, -2.5, -1.2, -0.5, 0.0, 0.4, 0.5, 1.5, 2.7, 6.6, 7.4, 12.0])
    assert _apply("nearest", x)[1].tolist() == [-8, -2, -1, -0, 0, 0, 0, 2, 3, 7, 7, 7]
    assert _apply("floor", x)[1].tolist() == [-8, -3, -2, -1, 0, 0, 0, 1, 2, 6, 7, 7]
    assert _apply("ceil", x)[1].tolist() == [-8, -2, -1, -0, 0, 1, 1, 2, 3, 7, 7, 7]


def test_stochastic_reproducible_from_seed_and_unbiased():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(200_000, generator=gen) * 10 - 5
    _, a = _apply("stochastic", x, seed=7)
    _, b = _apply("stochastic", x, seed=7)
    _, c = _apply("stochastic", x, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.all((a == torch.floor(x)) | (a == torch.ceil(x)))
    # unbiased: mean error ~ 0 (std of the mean of U(0,1)-Bernoulli errors ~ 0.29 / sqrt(n))
    assert abs((a - x).mean().item()) < 5 * 0.29 / math.sqrt(x.numel())
    # and per fractional part: x = k + 0.25 rounds up a quarter of the time
    q = torch.full((100_000,), 0.25)
    _, up = _apply("stochastic", q, seed=3)
    assert abs(up.mean().item() - 0.25) < 0.01


def test_adaround_initially_reproduces_x():
    x = torch.randn(1000) * 3
    r, soft = _apply("adaround", x)
    assert isinstance(r, AdaRounding)
    assert torch.allclose(soft, x.clamp(LO, HI), atol=1e-5)
    hard = r.hard_codes(x, LO, HI)
    assert torch.equal(hard, torch.clamp(torch.floor(x) + ((x - x.floor()) >= 0.5).float(), LO, HI))


def test_adaround_regulariser_schedule():
    x = torch.randn(100)
    r, _ = _apply("adaround", x)
    r.set_progress(0.1)
    assert r.regularizer().item() == 0.0 and r.beta == 20.0
    r.set_progress(0.2)
    assert r.beta == 20.0 and r.regularizer().item() > 0
    r.set_progress(0.6)
    assert r.beta == pytest.approx(11.0)
    r.set_progress(1.0)
    assert r.beta == pytest.approx(2.0)
    h = r.h()
    expected = 0.01 * (1 - (2 * h - 1).abs().pow(2.0)).sum()
    assert r.regularizer().item() == pytest.approx(expected.item())


def test_attention_tau_zero_is_nearest():
    x = torch.randn(10_000) * 4
    r, q = _apply("attention", x, tau=0.0)
    assert torch.all(r.alpha == 0)
    assert torch.equal(q, torch.clamp(torch.round(x), LO, HI))


def test_attention_init_is_gaussian_in_step_units_and_seeded():
    x = torch.zeros(100_000)
    r, _ = _apply("attention", x, tau=0.5, seed=3)
    assert abs(r.alpha.std().item() - 0.5) < 0.01
    assert abs(r.alpha.mean().item()) < 0.01
    r2, _ = _apply("attention", x, tau=0.5, seed=3)
    assert torch.equal(r.alpha, r2.alpha)


def test_attention_init_zero_starts_at_nearest_and_still_learns_with_eq6():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=gen) * 4
    r, q = _apply("attention", x, tau=0.5, init="zero")
    assert torch.all(r.alpha == 0)
    assert torch.equal(q, torch.clamp(torch.round(x), LO, HI))
    upstream = torch.randn(4000, generator=gen)
    (r(x, LO, HI) * upstream).sum().backward()
    r.finish_gradient()
    inside = (x > LO + 1) & (x < HI - 1)
    # Phi(0) = 1/2: both directions pass at half strength, so alpha can leave nearest (tau = 0
    # would let it only come back)
    assert torch.allclose(r.alpha.grad[inside], upstream[inside] * 0.5)
    assert "init=zero" in repr(r)
    with pytest.raises(QuantConfigError, match=r"quant\.rounding_args\.init='uniform': one of "
                                               r"gaussian, zero"):
        from attnround_pl.quant import rounding_settings
        rounding_settings("attention", {"init": "uniform"})


def test_attention_tau_end_moves_eq6_width_linearly_and_keeps_the_initial_spread():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4000, generator=gen)
    r = make_rounding("attention", tau=0.5, tau_end=0.1, seed=2)
    r.init_state(x)
    assert abs(r.alpha.std().item() - 0.5) < 0.03  # drawn with tau, not tau_end
    upstream = torch.randn(4000, generator=gen)
    widths = []
    for t, width in ((0.0, 0.5), (0.5, 0.3), (1.0, 0.1)):
        r.set_progress(t)
        widths.append(r.width)
        r.alpha.grad = None
        (r(x, LO, HI) * upstream).sum().backward()
        r.finish_gradient()
        alpha = r.alpha.detach()
        expected = _reference_eq6(upstream, alpha, width, torch.round(x + alpha), LO, HI)
        assert torch.allclose(r.alpha.grad, expected, atol=1e-6), t
    assert widths == pytest.approx([0.5, 0.3, 0.1])
    assert "tau_end=0.1" in repr(r)
    fixed = make_rounding("attention", tau=0.5)
    fixed.set_progress(0.9)
    assert fixed.width == 0.5
    with pytest.raises(QuantConfigError, match=r"tau_end=-1"):
        make_rounding("attention", tau=0.5, tau_end=-1.0)


@pytest.mark.parametrize("tau", [0.25, 0.5, 1.0])
def test_attention_backward_is_phi_formula_both_signs(tau):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=gen)
    r = AttentionRounding(tau=tau, seed=1)
    r.init_state(x)
    upstream = torch.randn(4000, generator=gen)  # both signs of dL/dz
    q = r(x, LO, HI)
    assert torch.equal(q, torch.clamp(torch.round(x + r.alpha.detach()), LO, HI))
    (q * upstream).sum().backward()
    assert torch.equal(r.alpha.grad, upstream)  # raw dL/dq until the gradient is finished
    r.finish_gradient()
    phi = torch.special.ndtr(r.alpha.detach() / tau)
    expected = torch.where(upstream > 0, upstream * phi, upstream * (1 - phi))
    assert torch.allclose(r.alpha.grad, expected, atol=1e-6)
    assert (upstream > 0).any() and (upstream < 0).any()
    assert torch.allclose(
        standard_normal_cdf(torch.tensor([-1.0, 0.0, 2.0])),
        torch.special.ndtr(torch.tensor([-1.0, 0.0, 2.0])),
    )


def test_attention_backward_at_clip_bounds_lets_only_inward_gradients_pass():
    x = torch.tensor([20.0, 20.0, -20.0, -20.0])
    r = AttentionRounding(tau=0.5)
    r.init_state(x)
    with torch.no_grad():
        r.alpha.zero_()
    upstream = torch.tensor([1.0, -1.0, 1.0, -1.0])
    (r(x, LO, HI) * upstream).sum().backward()
    r.finish_gradient()
    # above hi: g > 0 (descent lowers alpha) passes; g < 0 is blocked. Below lo: the reverse.
    assert r.alpha.grad.tolist() == [0.5, 0.0, 0.0, -0.5]


def _reference_eq6(grad, alpha, tau, raw, lo, hi):
    """Eq. 6 as first written (where-based, masks from the clipping bounds)."""
    if tau > 0:
        phi = standard_normal_cdf(alpha / tau)
    else:
        phi = (alpha > 0).to(alpha.dtype) + 0.5 * (alpha == 0).to(alpha.dtype)
    factor = torch.where(grad > 0, phi, 1 - phi)
    outward = ((raw > hi) & (grad < 0)) | ((raw < lo) & (grad > 0))
    return torch.where(outward, torch.zeros_like(grad), grad * factor)


@pytest.mark.parametrize("tau", [0.0, 0.5, 2.0])
def test_eq6_in_place_matches_the_where_formula_with_clipping(tau):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(20_000, generator=gen) * 6  # a good share beyond [-8, 7]
    r = AttentionRounding(tau=tau, seed=2)
    r.init_state(x)
    if tau == 0:
        with torch.no_grad():  # tau = 0 starts at 0; give alpha both signs and exact zeros
            r.alpha.copy_(torch.randn(20_000, generator=gen).round())
    upstream = torch.randn(20_000, generator=gen)
    upstream[:100] = 0.0
    (r(x, LO, HI) * upstream).sum().backward()
    raw = torch.round(x + r.alpha.detach())
    expected = _reference_eq6(upstream, r.alpha.detach(), tau, raw, LO, HI)
    r.finish_gradient()
    assert ((raw < LO) | (raw > HI)).sum() > 1000
    torch.testing.assert_close(r.alpha.grad, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(r.alpha.grad == 0, expected == 0)


def test_attention_forward_sends_no_gradient_to_its_input():
    # q is computed outside autograd: only alpha learns, even from an input that asks for a
    # gradient (the weight quantizer passes w / s of frozen float weights)
    x = (torch.randn(50) * 3).requires_grad_()
    r = AttentionRounding(tau=0.5, seed=1)
    r.init_state(x.detach())
    q = r(x, LO, HI)
    assert torch.equal(q.detach(), torch.clamp(torch.round(x.detach() + r.alpha.detach()), LO, HI))
    (q * torch.arange(50.0)).sum().backward()
    assert x.grad is None and torch.equal(r.alpha.grad, torch.arange(50.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_scaled_is_scale_times_the_rounding_bit_for_bit(dtype):
    # the weight quantizer's path and the rounding's forward (one autograd Function) against
    # the composed autograd form ``scale * (q + (alpha - alpha))``:
    # values (the sign of every zero too), overshoot and alpha's gradient, with weights
    # clipped at both bounds, a bound at 0 (where clamp and maximum differ in a zero's sign)
    # and values that round to -0.0
    gen = torch.Generator().manual_seed(11)
    channels = 6
    x = (torch.randn(channels, 4, 3, 3, generator=gen) * 6).to(dtype)
    x[1] = -0.2  # round(-0.2 + 0) is -0.0
    lo = torch.tensor([-8.0, 0.0, -4.0, 0.0, -8.0, -1.0], dtype=dtype).reshape(-1, 1, 1, 1)
    hi = lo + 15
    scale = (torch.rand(channels, 1, 1, 1, generator=gen) + 0.01).to(dtype)
    up = torch.randn(x.shape, generator=gen).to(dtype)
    up[2] = 0.0
    r = AttentionRounding(tau=0.5, seed=3)
    r.init_state(x)
    with torch.no_grad():
        r.alpha[1] = 0.0
    # the reference: the composed autograd form the rounding computed until issue 31
    alpha = r.alpha
    raw = torch.round(x + alpha.detach())
    q = torch.clamp(raw, lo, hi)
    composed = scale * (q + (alpha - alpha.detach()))
    (composed * up).sum().backward()
    results = [(composed.detach(), torch.sub(q, raw), alpha.grad)]
    r.alpha.grad = None
    for value in (r.scaled(x, lo, hi, scale), scale * r(x, lo, hi)):  # forward: scale 1
        (value * up).sum().backward()
        results.append((value.detach(), r._overshoot, r.alpha.grad))
        r.alpha.grad = None
    (v0, o0, g0) = results[0]
    assert ((o0 > 0).sum() > 10) and ((o0 < 0).sum() > 10)  # clipped at both bounds
    assert (v0 == 0).sum() > 36  # the zeros of the -0.0 row and the bound at 0
    for v1, o1, g1 in results[1:]:
        for a, b in ((v0, v1), (o0, o1), (g0, g1)):
            assert a.dtype == b.dtype == dtype
            assert torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))


def test_eq6_on_a_unit_at_once_is_each_rounding_s_eq6_bit_for_bit():
    # finish_rounding_gradients gives a unit's Attention Roundings to one multi-tensor eq. 6
    # (widths > 0; a width of 0 goes its own way): the gradients are the one-by-one ones
    from attnround_pl.quant import finish_rounding_gradients

    gen = torch.Generator().manual_seed(6)
    shapes, taus = [(16, 8, 3, 3), (300,), (5, 7)], [0.5, 2.0, 0.0]
    xs = [torch.randn(s, generator=gen) * 6 for s in shapes]  # some beyond [-8, 7]
    ups = [torch.randn(s, generator=gen) for s in shapes]
    grads = []
    for together in (False, True):
        roundings = [AttentionRounding(tau=t, seed=i) for i, t in enumerate(taus)]
        for r, x, up in zip(roundings, xs, ups, strict=True):
            r.init_state(x)
            (r(x, LO, HI) * up).sum().backward()
        if together:
            finish_rounding_gradients(roundings)
        else:
            for r in roundings:
                r.finish_gradient()
        grads.append([r.alpha.grad for r in roundings])
    blocked = sum(int((g == 0).sum()) for g in grads[1])
    assert blocked > 10  # clipped weights pushed further out: zeroed
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def _train_to_target(rounding, x, target, steps=400, lr=0.05):
    rounding.init_state(x)
    opt = torch.optim.Adam(rounding.parameters(), lr=lr)
    for step in range(steps):
        rounding.set_progress(step / steps)
        opt.zero_grad()
        loss = (rounding(x, LO, HI) - target).pow(2).sum() + rounding.regularizer()
        loss.backward()
        rounding.finish_gradient()
        opt.step()
    return rounding.hard_codes(x, LO, HI)


def test_attention_moves_weight_more_than_one_step_adaround_cannot():
    x = torch.tensor([0.3, -1.2, 2.1])
    target = torch.tensor([2.0, -3.0, 0.0])  # two steps from round(x): beyond floor/ceil
    att = _train_to_target(AttentionRounding(tau=0.5, seed=0), x, target)
    assert torch.equal(att, target)
    assert torch.all((att - torch.round(x)).abs() == 2)
    ada = _train_to_target(AdaRounding(), x, target)
    assert torch.all((ada == torch.floor(x)) | (ada == torch.floor(x) + 1))
    assert torch.all((ada - x).abs() < 1.0)


def test_unknown_rounding_lists_valid_names():
    with pytest.raises(QuantConfigError, match="unknown rounding 'round'.*adaround.*attention"):
        make_rounding("round")


@pytest.mark.parametrize("tau", [-0.1, float("nan"), float("inf")])
def test_bad_tau(tau):
    with pytest.raises(QuantConfigError, match="tau="):
        make_rounding("attention", tau=tau)


def test_every_rounding_has_its_settings_with_defaults_and_checks():
    from attnround_pl.quant import AdaRoundSettings, AttentionSettings, rounding_settings

    assert rounding_settings("attention", None) == AttentionSettings(tau=0.5)
    assert rounding_settings("adaround", {}) == AdaRoundSettings(0.01, 20.0, 2.0, 0.2)
    for name, cls in ROUNDINGS.items():
        settings = rounding_settings(name, None)
        assert isinstance(settings, cls.settings_class)
        assert cls.from_settings(settings, seed=3).name == name
    with pytest.raises(QuantConfigError, match=r"^rounding 'floor' has no setting 'tau'; it "):
        make_rounding("floor", tau=0.5)
    with pytest.raises(QuantConfigError, match=r"quant\.rounding_args\.reg_weight=-1\.0 must"):
        rounding_settings("adaround", {"reg_weight": -1.0})
    with pytest.raises(QuantConfigError, match=r"quant\.rounding_args=\[1\] must be a mapping"):
        rounding_settings("attention", [1])
    ada = make_rounding("adaround", beta_start=10, warmup=0.1)
    assert (ada.beta_start, ada.warmup, ada.beta_end) == (10.0, 0.1, 2.0)


def _soft_round(v: torch.Tensor, a: float) -> torch.Tensor:
    """Agustsson and Theis' soft rounding, written from its formula."""
    m = torch.floor(v) + 0.5
    return m + torch.tanh(a * (v - m)) / (2 * math.tanh(a / 2))


def test_attention_relax_learns_on_the_soft_rounding_and_freezes_to_the_hard_one():
    gen = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(3000, generator=gen, dtype=torch.float64)
    r = make_rounding("attention", tau=0.5, seed=1, relax=2.0, relax_end=32.0)
    r.init_state(x)
    alpha = r.alpha.detach()
    v = x + alpha
    hard = torch.clamp(torch.round(v), LO, HI)
    assert torch.equal(r(x, LO, HI), hard)  # not learning: the paper's hard value
    r.set_learning(True)
    upstream = torch.randn(3000, generator=gen, dtype=torch.float64)
    for t, a in ((0.0, 2.0), (0.5, 8.0), (1.0, 32.0)):  # 2 -> 32 geometrically
        r.set_progress(t)
        assert r.hardness == pytest.approx(a)
        r.alpha.grad = None
        value = r.scaled(x, LO, HI, torch.tensor(0.5, dtype=torch.float64))
        soft = torch.clamp(_soft_round(v, a), LO, HI)
        assert torch.allclose(value, 0.5 * soft, atol=1e-12), t
        (value * upstream).sum().backward()
        # the soft rounding's slope, times the scale: autograd's derivative of the formula
        probe = v.clone().requires_grad_()
        _soft_round(probe, a).sum().backward()
        raw = r.alpha.grad.clone()
        assert torch.allclose(raw, 0.5 * upstream * probe.grad, atol=1e-10), t
        # eq. 6 shapes it, reading the hard value's overshoot at the bounds
        r.finish_gradient()
        assert torch.allclose(r.alpha.grad, _reference_eq6(raw, alpha, 0.5, torch.round(v),
                                                           LO, HI), atol=1e-10)
    # soft at the start (a weight's value moves continuously), near hard at the end
    assert (torch.clamp(_soft_round(v, 2.0), LO, HI) - hard).abs().max() > 0.3
    near = (torch.clamp(_soft_round(v, 32.0), LO, HI) - hard).abs()
    far_from_border = (v - torch.floor(v) - 0.5).abs() > 0.1
    assert near[far_from_border].max() < 1e-2
    r.set_learning(False)
    assert torch.equal(r.hard_codes(x, LO, HI), hard)
    assert torch.equal(r(x, LO, HI), hard)
    assert "relax=2.0->32.0" in repr(r)


def test_attention_relax_until_learns_soft_then_hard_with_the_straight_through_gradient():
    gen = torch.Generator().manual_seed(4)
    x = 3 * torch.randn(2000, generator=gen, dtype=torch.float64)
    r = make_rounding("attention", tau=0.5, seed=2, relax=2.0, relax_end=32.0, relax_until=0.5)
    r.init_state(x)
    v = x + r.alpha.detach()
    hard = torch.clamp(torch.round(v), LO, HI)
    r.set_learning(True)
    upstream = torch.randn(2000, generator=gen, dtype=torch.float64)
    # the hardness spans the soft part (2 -> 32 over the first half), then the hard value
    for t, a, soft in ((0.0, 2.0, True), (0.25, 8.0, True), (0.5, 32.0, False),
                       (0.9, 32.0, False)):
        r.set_progress(t)
        assert (r.soft, r.hardness) == (soft, pytest.approx(a)), t
        r.alpha.grad = None
        value = r(x, LO, HI)
        (value * upstream).sum().backward()
        if soft:
            assert torch.allclose(value, torch.clamp(_soft_round(v, a), LO, HI), atol=1e-12)
            assert not torch.equal(r.alpha.grad, upstream)
        else:  # the paper's: the hard value, dL/dq passed to alpha unchanged
            assert torch.equal(value, hard) and torch.equal(r.alpha.grad, upstream)
    assert "relax=2.0->32.0 until 0.5" in repr(r)
    # 1 (the default): soft to the last step
    r = make_rounding("attention", tau=0.5, relax=2.0, relax_end=32.0)
    r.set_progress(1.0)
    assert r.soft and r.hardness == pytest.approx(32.0) and "until" not in repr(r)


def test_the_weight_quantizer_tells_its_rounding_when_it_learns():
    from attnround_pl.quant.weight_quant import WeightQuantizer

    w = torch.randn(4, 3, 3, 3)
    q = WeightQuantizer(w, 2, make_rounding("attention", relax=1.0))
    base = q(w).detach()
    q.set_learning(True)
    assert q.rounding.learning and not torch.equal(q(w).detach(), base)  # the soft value
    q.set_learning(False)
    assert not q.rounding.learning and torch.equal(q(w).detach(), base)


@pytest.mark.parametrize("args, message", [
    ({"relax": -1.0}, r"relax=-1\.0 must be a number >= 0"),
    ({"relax": float("nan")}, r"relax=nan must be a finite number"),
    ({"relax": 4.0, "relax_end": 2.0}, r"relax_end=2\.0 must be at least relax=4\.0"),
    ({"relax": 4.0, "relax_until": 0.0}, r"relax_until=0\.0 must be a fraction of a unit's"),
    ({"relax": 4.0, "relax_until": 1.5}, r"relax_until=1\.5 must be a fraction"),
    ({"relax": 4.0, "relax_until": True}, r"relax_until=True must be a number"),
    # settings of the soft rounding without it: refused, not ignored
    ({"relax_until": 0.5}, r"relax_until=0\.5 shapes the soft rounding, which relax=0 leaves "
                           r"off: set quant\.rounding_args\.relax > 0 or leave relax_until out"),
    ({"relax": 0.0, "relax_end": 200.0}, r"relax_end=200\.0 shapes the soft rounding"),
])
def test_bad_relax_settings_are_refused_in_one_line(args, message):
    from attnround_pl.quant import rounding_settings

    with pytest.raises(QuantConfigError, match=r"quant\.rounding_args\." + message):
        rounding_settings("attention", args)
