import math

import pytest
import torch

from attnround_pl.quant import ActQuantizer, QuantConfigError


def _calibrated(x, bits=4, signed=None):
    q = ActQuantizer(bits, signed=signed)
    q.start_observing()
    assert torch.equal(q(x), x)  # observing passes data through
    q.finish_observing()
    return q


def test_signedness_detected_from_data():
    relu_out = torch.relu(torch.randn(8, 16, 4, 4))
    assert _calibrated(relu_out).signed is False
    assert _calibrated(torch.randn(8, 16, 4, 4)).signed is True
    assert _calibrated(relu_out, signed=True).signed is True


def test_unsigned_4bit_codes_and_range():
    x = torch.relu(torch.randn(64, 32, 8, 8))
    q = _calibrated(x, bits=4)
    y = q(x)
    codes = (y / q.step).detach()
    assert torch.allclose(codes, torch.round(codes), atol=1e-4)
    codes = torch.round(codes)
    assert codes.min() >= 0 and codes.max() <= 15
    assert len(torch.unique(codes)) == 16
    rel = (y - x).norm() / x.norm()
    assert rel < 0.15


def test_codes_follow_a_change_of_signedness_or_bits():
    # the forward keeps the grid's range between calls; a quantizer whose signedness or bits
    # change afterwards (a loaded state, mixed precision) must use the new range at once
    x = torch.randn(64, 8, 4, 4) * 3
    q = _calibrated(torch.relu(x), bits=4)
    assert (q(x) / q.step).detach().round().min() == 0  # unsigned: negatives clip to 0
    q.signed = True
    assert (q(x) / q.step).detach().round().min() == -8
    q.bits = 3
    assert (q(x) / q.step).detach().round().max() == 3


def test_mse_step_beats_max_step():
    x = torch.randn(100_000)
    q = _calibrated(x, bits=4)
    mse = (q(x) - x).pow(2).mean()
    with torch.no_grad():
        q.step.fill_(x.abs().max().item() / 7)
    assert mse < (q(x) - x).pow(2).mean()


def test_lsq_gradient_of_step():
    x = torch.tensor([0.26, 0.74, 5.0, -1.0])
    q = ActQuantizer(2, signed=False)
    q.start_observing()
    q(x)
    q.finish_observing()
    with torch.no_grad():
        q.step.fill_(0.5)
    y = q(x)
    assert y.tolist() == [0.5, 0.5, 1.5, 0.0]
    y.sum().backward()
    # LSQ: d x_hat / d s = round(x/s) - x/s inside, qmax / qmin outside; times g = 1/sqrt(N qmax)
    inner = [1 - 0.52, 1 - 1.48, 3.0, 0.0]
    g = 1 / (4 * 3) ** 0.5
    assert q.step.grad.item() == pytest.approx(sum(inner) * g, rel=1e-5)


def test_learning_the_step_reduces_error():
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(4096, generator=gen))
    q = _calibrated(x, bits=3)
    with torch.no_grad():
        q.step.mul_(3.0)  # a poor start
    before = (q(x) - x).pow(2).mean().item()
    opt = torch.optim.Adam([q.step], lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        (q(x) - x).pow(2).mean().backward()
        opt.step()
    assert (q(x) - x).pow(2).mean().item() < 0.5 * before


def test_float_bits_and_disabled_pass_through():
    x = torch.randn(10)
    assert torch.equal(ActQuantizer(32)(x), x)
    q = _calibrated(x, bits=4)
    q.enabled = False
    assert torch.equal(q(x), x)


def test_bad_bits_and_uncalibrated_use():
    with pytest.raises(QuantConfigError, match=r"a_bits=9 is outside 2\.\.8 \(or 32"):
        ActQuantizer(9)
    with pytest.raises(RuntimeError, match="before its step was initialised"):
        ActQuantizer(4)(torch.randn(3))


def test_nan_in_observed_data_is_named():
    q = ActQuantizer(4)
    q.start_observing()
    q(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        q.finish_observing()


def _dropping(p: float, seed: int = 0) -> ActQuantizer:
    q = ActQuantizer(4, seed=seed, drop_prob=p)
    q.start_observing()
    q(torch.randn(64, 8, 8, 8))
    q.finish_observing()
    return q


def test_qdrop_keeps_float_values_with_its_probability_only_while_dropping():
    x = torch.randn(64, 8, 8, 8)
    q = _dropping(0.5)
    quantized = q(x).detach()
    q.dropping = True
    out = q(x).detach()
    kept = (out == x) & (quantized != x)
    changed = quantized != x
    assert 0.48 < kept.sum() / changed.sum() < 0.52
    assert torch.equal(out[~kept], quantized[~kept])  # the rest stays quantized
    assert torch.equal(_dropping(0.5)._drop_mask(x), _dropping(0.5)._drop_mask(x))  # seeded
    assert not torch.equal(_dropping(0.5)._drop_mask(x), _dropping(0.5, seed=1)._drop_mask(x))
    q.dropping = False
    assert torch.equal(q(x).detach(), quantized)
    zero = _dropping(0.0)
    plain = zero(x)
    zero.dropping = True
    assert torch.equal(zero(x), plain)
    with pytest.raises(QuantConfigError, match=r"drop_prob=1.0 must be in \[0, 1\)"):
        ActQuantizer(4, drop_prob=1.0)


def _composed_lsq(x, step, qmin, qmax, g):
    """The reference: LSQ written as autograd composes it (what ActQuantizer ran before)."""
    scaled = (step - step * g).detach() + step * g  # gradient times g
    xt = torch.clamp(x / scaled, qmin, qmax)
    return ((torch.round(xt) - xt).detach() + xt) * scaled


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("qmin, qmax", [(0, 15), (-8, 7), (0, 3), (-128, 127)])
def test_fused_lsq_matches_the_composed_reference(qmin, qmax, dtype):
    from attnround_pl.quant.act_quant import lsq_round

    torch.manual_seed(0)
    x = torch.randn(8, 4, 6, 6, dtype=dtype) * 0.8
    x[0, 0, 0, :3] = torch.tensor([qmin, qmax, 2.5], dtype=dtype) * 0.1  # bounds, a tie
    weights = torch.rand_like(x)
    g = 1 / math.sqrt(x.numel() * qmax)
    results = []
    for fn in (_composed_lsq, lsq_round):
        xi = x.clone().requires_grad_()
        step = torch.tensor(0.1, dtype=dtype, requires_grad=True)
        out = fn(xi, step, qmin, qmax, g)
        (out * weights).sum().backward()
        results.append((out.detach(), xi.grad, step.grad))
    (ref_out, ref_dx, ref_ds), (out, dx, ds) = results
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(dx, ref_dx, rtol=0, atol=1e-6)
    assert torch.equal(dx == 0, ref_dx == 0)  # the same elements pass the gradient
    # in float32 the reference's gradient-scaling trick moves the step by an ulp, which moves
    # the planted tie's x/s: the step gradients then agree to 1e-4, in float64 to 1e-12
    torch.testing.assert_close(ds, ref_ds, rtol=1e-12 if dtype == torch.float64 else 1e-4,
                               atol=0)
    assert ds.abs() > 0


def test_fused_lsq_skips_the_gradients_nobody_needs():
    from attnround_pl.quant.act_quant import lsq_round

    x = torch.randn(4, 10)
    step = torch.tensor(0.2, requires_grad=True)
    lsq_round(x, step, 0, 15, 0.5).sum().backward()  # x needs none
    assert step.grad is not None and x.grad is None
    xi = x.clone().requires_grad_()
    lsq_round(xi, torch.tensor(0.2), 0, 15, 0.5).sum().backward()  # the step needs none
    assert torch.equal(xi.grad, ((x / 0.2 > 0) & (x / 0.2 < 15)).float())


def test_drop_settings_are_checked_by_their_key():
    from attnround_pl.quant import DropSettings

    assert DropSettings().validate().prob == 0.0
    with pytest.raises(QuantConfigError, match=r"^quant\.drop\.prob=1\.0 must be in \[0, 1\)"):
        DropSettings(prob=1.0).validate()
    with pytest.raises(QuantConfigError, match=r"^quant\.drop\.prob=nan must be a finite"):
        DropSettings(prob=math.nan).validate()
