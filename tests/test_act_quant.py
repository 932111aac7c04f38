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
