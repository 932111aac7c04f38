import torch

from attnround_pl.quant import WeightQuantizer, make_rounding


def _weight(seed=0, shape=(16, 8, 3, 3)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_per_channel_scales_and_codes_in_grid():
    w = _weight()
    wq = WeightQuantizer(w, 4, make_rounding("nearest"))
    assert wq.scale.shape == (16, 1, 1, 1)
    codes = wq.integer_codes(w)
    assert codes.dtype == torch.uint8
    assert int(codes.min()) >= 0 and int(codes.max()) <= 15
    assert torch.allclose(wq(w), wq.scale * (codes.float() - wq.zero_point))


def test_symmetric_signed_codes():
    w = _weight()
    wq = WeightQuantizer(w, 3, make_rounding("nearest"), symmetric=True)
    codes = wq.integer_codes(w)
    assert codes.dtype == torch.int8 and int(codes.min()) >= -4 and int(codes.max()) <= 3
    assert torch.all(wq.zero_point == 0)


def test_per_tensor_scale():
    w = _weight()
    wq = WeightQuantizer(w, 4, make_rounding("nearest"), per_channel=False)
    assert wq.scale.dim() == 0


def test_freeze_keeps_hard_codes_and_drops_parameters():
    w = _weight()
    wq = WeightQuantizer(w, 4, make_rounding("attention", tau=0.5, seed=1))
    assert len(list(wq.parameters())) == 1
    before = wq(w).detach().clone()
    codes = wq.integer_codes(w)
    wq.freeze(w)
    assert wq.frozen and len(list(wq.parameters())) == 0
    assert torch.equal(wq.codes, codes)
    assert torch.equal(wq(torch.zeros_like(w)), before)  # the input no longer matters


def test_adaround_freeze_uses_hard_threshold():
    w = _weight()
    wq = WeightQuantizer(w, 4, make_rounding("adaround"))
    # before learning, h(V) is the fractional part: hard codes equal nearest
    near = WeightQuantizer(w, 4, make_rounding("nearest"))
    assert torch.equal(wq.integer_codes(w), near.integer_codes(w))


def test_learning_keeps_w_over_s_and_the_bounds_until_it_ends():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    q = WeightQuantizer(w, 4, make_rounding("attention", tau=0.5))
    plain = q(w)
    q.set_learning(True)
    assert torch.equal(q(w), plain) and q._scaled is not None
    kept = q._scaled[0]
    assert q(w) is not plain and q._scaled[0] is kept  # computed once while learning
    q.set_learning(False)
    assert q._scaled is None
    w2 = w * 2  # outside learning every call sees its weight
    assert torch.equal(q(w2), q.scale * q.rounding(w2 / q.scale, *q._bounds()))
    assert q._scaled is None
    assert "_scaled" not in str(q.state_dict().keys())
