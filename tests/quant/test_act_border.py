import lightning.pytorch as pl
import pytest
import torch

from attnround_pl.calib import BlockReconstruction, build_unit_data, unit_mse
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.models import build_model
from attnround_pl.quant import (
    ActQuantizer,
    QuantConfig,
    QuantConfigError,
    act_border,
    calibrate_activations,
    fold_batchnorms,
    quantize_model,
)
from attnround_pl.quant.act_border import BORDER_MARGIN, AQuantBorder, _BorderRound


def explicit_codes(xt, b):
    """The border's rule as derived: ``n + 1[frac > b]``, and at an exact tie (frac == b)
    the even one of n, n + 1."""
    n = torch.floor(xt)
    frac = xt - n
    odd = torch.remainder(n, 2) == 1
    up = (frac > b) | ((frac == b) & odd)
    return n + up.to(xt.dtype)


def _calibrated(x, border, bits=4):
    q = ActQuantizer(bits, border=border)
    q.start_observing()
    q(x)
    q.finish_observing()
    return q


def test_zero_border_is_nearest_bit_for_bit_ties_included():
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(16, 8, 5, 5, generator=gen))
    near, aq = _calibrated(x, "nearest"), _calibrated(x, "aquant")
    assert aq.border is not None and aq.border.k.shape == (8,)
    step = near.step.detach()
    ties = (torch.arange(16 * 8 * 25).reshape(16, 8, 5, 5) % 14 + 0.5) * step  # exact .5 codes
    for data in (x, ties, x * 3):
        assert torch.equal(near(data), aq(data))


def test_folded_and_explicit_forms_give_identical_codes():
    gen = torch.Generator().manual_seed(1)
    border = AQuantBorder(6, reach=15).double()
    for scale in (0.01, 0.2, 5.0):  # 5.0 drives the shrink: raw parameters far too large
        with torch.no_grad():
            for p in border.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
        xt = torch.rand(64, 6, 7, 7, generator=gen, dtype=torch.float64) * 15
        b = border.border(xt)
        assert b.min() >= BORDER_MARGIN - 1e-12 and b.max() <= 1 - BORDER_MARGIN + 1e-12
        explicit = explicit_codes(xt, b)
        assert torch.equal(explicit, border.folded(xt))
        assert torch.equal(border(xt).detach(), explicit)


def test_quantizer_rounds_the_folded_form_bit_for_bit_next_to_the_borders():
    # float32, values placed on and a few ulps around each channel's border: the quantizer's
    # codes are round((1 - k) x~ - c) computed as the export's folded form, element for element
    gen = torch.Generator().manual_seed(5)
    border = AQuantBorder(4, reach=8)
    with torch.no_grad():
        border.k.copy_(torch.tensor([0.03, -0.02, 0.0, 0.01]))
        border.c.copy_(torch.tensor([0.1, -0.05, 0.2, 0.0]))
    step = torch.tensor(0.1)
    n = torch.randint(-8, 7, (256, 4, 3), generator=gen).float()
    on = n + border.border(n + 0.5).detach()  # x~ about on the border (the border moves with x~)
    xt = torch.cat([on + torch.randint(-3, 4, on.shape, generator=gen) * 1e-6, on], dim=2)
    x = xt * step
    codes = border.quantize(x, step, -8, 7, 0.01).detach() / step
    assert torch.equal(codes.round(), border.folded(torch.clamp(x / step, -8, 7)))
    # the rule n + 1[frac >= b] gives other codes only within float rounding of a border
    xs = torch.clamp(x / step, -8, 7)
    b = border.border(xs).detach()
    differ = codes.round() != explicit_codes(xs, b)
    assert 0 < differ.sum() < differ.numel() / 10
    assert ((xs - torch.floor(xs) - b)[differ].abs() < 2e-6).all()


def test_single_product_learns_the_weight_error_slope():
    # Quantized weight w(1 + d): the balancing border is 0.5 + d * x~, i.e. k = d, c = 0.
    # d is small enough that this border stays inside (0, 1) over the 4-bit range.
    d = 0.02
    gen = torch.Generator().manual_seed(2)
    border = AQuantBorder(1, reach=15)
    opt = torch.optim.Adam(border.parameters(), lr=2e-3)
    for _ in range(1500):
        xt = torch.rand(512, 1, generator=gen) * 15
        loss = ((1 + d) * border(xt) - xt).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    k, c = border.effective()
    assert abs(k.item() - d) < 0.006 and abs(c.item()) < 0.1
    xt = torch.rand(20000, 1, generator=gen) * 15
    learned = ((1 + d) * border(xt).detach() - xt).pow(2).mean()
    nearest = ((1 + d) * torch.round(xt) - xt).pow(2).mean()
    assert learned < 0.8 * nearest
    assert learned < 1.03 * (1 + d) ** 2 / 12  # the error of unbiased rounding, as good as it gets


def test_unknown_border_named():
    with pytest.raises(
        QuantConfigError, match="unknown act_border 'aqant'; valid: nearest, aquant"
    ):
        QuantConfig(act_border="aqant").validate()


@pytest.mark.parametrize("a_bits", [2, 3])
def test_learned_border_beats_nearest_border_on_a_trained_unit(fmnist_root, a_bits):
    dm = FashionMNISTDataModule(root=str(fmnist_root), calib_size=256)
    batches = [x for x, _ in dm.calib_dataloader(batch_size=128)]
    folded = build_model("resnet20")
    fold_batchnorms(folded)
    mse = {}
    for border in ("nearest", "aquant"):
        cfg = QuantConfig(w_bits=4, a_bits=a_bits, rounding="nearest", act_border=border)
        q = quantize_model(build_model("resnet20"), cfg)
        calibrate_activations(q, batches)
        data = build_unit_data(q, folded, "layer2.1", batches)
        unit = q.get_submodule("layer2.1")
        module = BlockReconstruction(unit, data, "layer2.1", iters=300, batch_size=64, seed=0)
        pl.Trainer(max_steps=300, max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", devices=1).fit(module)
        unit.eval()
        mse[border] = unit_mse(unit, data)
    assert mse["aquant"] < mse["nearest"], mse


def test_border_survives_the_checkpoint_round_trip(tmp_path):
    from attnround_pl.export import load_quantized, save_quantized
    from attnround_pl.quant import freeze_model, quant_layers

    model = build_model("resnet20", weights=None)
    x = torch.randn(8, 1, 28, 28)
    cfg = QuantConfig(rounding="nearest", act_border="aquant")
    q = quantize_model(model, cfg)
    calibrate_activations(q, [x])
    with torch.no_grad():
        for layer in quant_layers(q).values():
            layer.input_quantizer.border.k.uniform_(-0.05, 0.05)
            layer.input_quantizer.border.c.uniform_(-0.2, 0.2)
    freeze_model(q)
    save_quantized(q, tmp_path / "q.pt", cfg, {"arch": "resnet20"})
    back, _ = load_quantized(tmp_path / "q.pt", lambda m: build_model(m["arch"], weights=None))
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


def test_calibration_run_with_the_border(tmp_path, tiny_fmnist):
    from attnround_pl.calib import FloatModel, ReconConfig, RunConfig, calibrate

    data = FashionMNISTDataModule(root=str(tiny_fmnist), calib_size=20, batch_size=30)
    run = RunConfig(out_dir=str(tmp_path), name="b", progress=False, eval_float=False,
                    eval_nearest=False)
    quant = QuantConfig(w_bits=3, a_bits=3, rounding="adaround", act_border="aquant")
    report = calibrate(FloatModel("resnet20", weights=None), data, quant,
                       ReconConfig(iters=3, batch_size=4), run, {"accelerator": "cpu"})
    assert report.quant["act_border"] == "aquant" and len(report.units) == 5  # the default units


def _composed_border(border, x, step, qmin, qmax, g):
    """The reference: the border quantizer as autograd composes it (what ActQuantizer ran
    before the fused function): LSQ's scaled step, clamp, ``AQuantBorder.forward``, ``* s``."""
    scaled = (step - step * g).detach() + step * g
    return border(torch.clamp(x / scaled, qmin, qmax)) * scaled


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, qmin, qmax, scale", [
    ((8, 5, 6, 6), 0, 15, 0.05), ((8, 5, 6, 6), -8, 7, 0.05), ((8, 5, 6, 6), 0, 3, 5.0),
    ((16, 5), -2, 1, 0.05)])  # scale 5: the shrink is active; (16, 5): a Linear's input
def test_fused_border_matches_the_composed_reference(shape, qmin, qmax, scale, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 0.6
    weights = torch.rand(shape, generator=gen, dtype=dtype)
    border = AQuantBorder(shape[1], reach=max(-qmin, qmax)).to(dtype)
    with torch.no_grad():
        for p in border.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * scale)
    g = 1 / (x.numel() * qmax) ** 0.5
    results = []
    for fn in (lambda *a: _composed_border(border, *a), border.quantize):
        xi = x.clone().requires_grad_()
        step = torch.tensor(0.1, dtype=dtype, requires_grad=True)
        border.zero_grad()
        out = fn(xi, step, qmin, qmax, g)
        (out * weights).sum().backward()
        results.append((out.detach(), xi.grad, step.grad, border.k.grad, border.c.grad))
    reference, fused = results
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4,
                                                                          "atol": 1e-5}
    codes = [(out / 0.1).round() for out, *_ in results]
    # float32: the reference's scaled step differs from 0.1 by an ulp, which may move an
    # element sitting on a border; count such elements, never more than a few
    assert (codes[0] != codes[1]).sum() <= (0 if dtype == torch.float64 else 2)
    same = codes[0] == codes[1]
    torch.testing.assert_close(fused[0][same], reference[0][same], **tol)
    torch.testing.assert_close(fused[1], reference[1], **tol)
    for got, want in zip(fused[2:], reference[2:], strict=True):
        torch.testing.assert_close(got, want, **tol)
        assert want.abs().sum() > 0


def _on_the_bound(dtype):
    """A |c| (k = 0) whose shrink ratio (0.5 - margin) / |c| is exactly 1 in ``dtype``."""
    c = torch.tensor(0.5 - BORDER_MARGIN, dtype=dtype)
    for _ in range(8):
        c = torch.nextafter(c, torch.tensor(0.0, dtype=dtype))
    for _ in range(16):  # ulps around 0.5 - margin
        if c.clamp_min(1e-12).reciprocal() * (0.5 - BORDER_MARGIN) == 1:
            return c
        c = torch.nextafter(c, torch.tensor(1.0, dtype=dtype))
    raise AssertionError("no value on the bound found")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, at_work", [((8, 6, 5, 5), 3), ((16, 6), 3), ((8, 6, 5, 5), 0)])
def test_shrink_inside_the_function_is_autograds_bit_for_bit(shape, at_work, dtype,
                                                            monkeypatch):
    # _BorderRound differentiates the shrink itself (and skips it on the CPU where it is idle);
    # the reference is the Function fed the effective (k, c) with autograd's graph of
    # ``effective`` behind them (its own shrink made the identity): values and all four
    # gradients agree exactly, with channels at work, idle, on the bound, and k = 0
    gen = torch.Generator().manual_seed(8)
    border = AQuantBorder(shape[1], reach=15).to(dtype)
    with torch.no_grad():
        border.k.copy_(torch.tensor([0.0, 0.001, -0.002, 0.05, -0.08, 0.03], dtype=dtype))
        border.c.copy_(torch.tensor([0.01, -0.02, 0.0, 0.3, 0.1, -0.2], dtype=dtype))
        if not at_work:  # every channel idle: the CPU's shortcut
            border.k.mul_(0.1)
            border.c.mul_(0.1)
        else:  # channel 0 exactly on the bound ((0.5 - margin) / bound == 1: no gradient)
            border.c[0] = _on_the_bound(dtype)
    k_eff = border.effective()[0].detach()
    assert (k_eff != border.k.detach()).sum() == at_work
    x = torch.randn(shape, generator=gen, dtype=dtype) * 0.8
    weights = torch.rand(shape, generator=gen, dtype=dtype)
    results = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        step = torch.tensor(0.1, dtype=dtype, requires_grad=True)
        border.zero_grad()
        if fused:
            out = border.quantize(xi, step, -8, 7, 0.01)
        else:
            k, c = border.effective()
            monkeypatch.setattr(act_border, "_shrink_is_idle", lambda x, bound: True)
            out = _BorderRound.apply(xi, step, k, c, 15.0, -8, 7, 0.01)
            monkeypatch.undo()
        (out * weights).sum().backward()
        results.append((out, xi.grad, step.grad, border.k.grad, border.c.grad))
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)
    assert results[0][3].abs().min() > 0  # every channel's k learns
