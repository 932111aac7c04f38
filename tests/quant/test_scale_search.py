import pytest
import torch

from attnround_pl.quant import UniformGrid, fake_quantize, search_qparams
from attnround_pl.quant.scale_search import range_to_qparams


def _mse(x, scale, zp, grid):
    return (fake_quantize(x, scale[:, None], zp[:, None], grid) - x).pow(2).mean(dim=1)


def test_mse_search_beats_minmax_on_gaussian_weights():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 576, generator=gen) * torch.linspace(0.01, 0.2, 64)[:, None]
    for bits in (2, 3, 4):
        grid = UniformGrid(bits, signed=False)
        scale, zp = search_qparams(w, grid, affine=True)
        lo, hi = w.amin(1).clamp_max(0), w.amax(1).clamp_min(0)
        mm_scale, mm_zp = range_to_qparams(lo, hi, grid, affine=True)
        searched, minmax = _mse(w, scale, zp, grid), _mse(w, mm_scale, mm_zp, grid)
        assert torch.all(searched <= minmax + 1e-12)
        # On Gaussian weights clipping pays clearly at low bits.
        assert searched.mean() < 0.8 * minmax.mean(), bits


def test_search_is_per_row_not_shared():
    # Two rows of very different ranges: each must get its own scale.
    w = torch.stack([torch.linspace(-1, 1, 101), torch.linspace(-100, 100, 101)])
    scale, zp = search_qparams(w, UniformGrid(8, signed=True), affine=False)
    assert scale.shape == (2,)
    assert torch.allclose(scale[1] / scale[0], torch.tensor(100.0), rtol=0.05)
    assert torch.all(zp == 0)


def test_affine_zero_point_is_integer_in_grid():
    w = torch.rand(8, 100) * 3 - 1  # range about [-1, 2]
    grid = UniformGrid(4, signed=False)
    scale, zp = search_qparams(w, grid, affine=True)
    assert torch.all(zp == torch.round(zp))
    assert torch.all((zp >= grid.qmin) & (zp <= grid.qmax))
    # 0.0 is exactly representable
    assert torch.all(fake_quantize(torch.zeros(8, 1), scale[:, None], zp[:, None], grid) == 0)


def test_unsigned_symmetric_for_nonnegative():
    x = torch.rand(1, 10000)
    grid = UniformGrid(8, signed=False)
    scale, zp = search_qparams(x, grid, affine=False)
    assert zp.item() == 0
    # 8-bit on uniform data: the best step is close to max / 255
    assert abs(scale.item() * 255 - 1.0) < 0.05
    assert _mse(x, scale, zp, grid).item() < (1 / 255) ** 2 / 12 * 1.5


def test_the_error_exponent_changes_the_clipping_and_2_is_the_mse():
    torch.manual_seed(0)
    x = torch.randn(16, 512)
    grid = UniformGrid(2, signed=False)
    s2, z2 = search_qparams(x, grid, affine=True)
    s2p, z2p = search_qparams(x, grid, affine=True, p=2.0)
    assert torch.equal(s2, s2p) and torch.equal(z2, z2p)

    def err(scale, zp, p):
        return (fake_quantize(x, scale[:, None], zp[:, None], grid) - x).abs().pow(p).mean(1)

    s24, z24 = search_qparams(x, grid, affine=True, p=2.4)
    assert not torch.equal(s24, s2)
    # each search is the better one under its own exponent, row by row
    assert (err(s24, z24, 2.4) <= err(s2, z2, 2.4) + 1e-7).all()
    assert (err(s2, z2, 2.0) <= err(s24, z24, 2.0) + 1e-7).all()
    # a larger exponent weighs the large errors more: it clips less on average
    assert s24.mean() > s2.mean()


def test_the_exponent_reaches_both_quantizers_and_is_checked():
    from attnround_pl.quant import QuantConfig, calibrate_activations, quant_layers, quantize_model
    from attnround_pl.quant.errors import QuantConfigError

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    images = [torch.randn(8, 3, 10, 10)]
    steps = {}
    for p in (2.0, 2.4):
        torch.manual_seed(0)
        qnet = quantize_model(net, QuantConfig(rounding="nearest", w_bits=2, a_bits=2,
                                               scale_search_p=p))
        calibrate_activations(qnet, images)
        layer = quant_layers(qnet)["2"]  # the middle layer: 2 bits
        steps[p] = (layer.weight_quantizer.scale.clone(),
                    float(layer.input_quantizer.step.detach()))
    assert not torch.equal(steps[2.0][0], steps[2.4][0]) and steps[2.0][1] != steps[2.4][1]
    for bad in (0.5, 5, "2", True):
        with pytest.raises(QuantConfigError, match="scale_search_p="):
            QuantConfig(scale_search_p=bad).validate()
