"""BlockSequencer: never worse than round-to-nearest (``recon.keep_better``), one log line per
unit, and top-k named by what it is."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import attnround_pl
from attnround_pl.calib.report import UnitResult
from attnround_pl.calib.sequencer import LINE_WIDTH, ReconConfig, unit_line
from attnround_pl.errors import SettingError
from attnround_pl.quant import QuantConfig, quant_layers


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )


def run(keep_better: bool, lr: float, act_border: str | None = None, **recon_args):
    model = small_cnn().eval()
    images = torch.randn(32, 3, 12, 12)
    labels = torch.randint(0, 2, (32,))
    recon = ReconConfig(**{"iters": 30, "batch_size": 8, "lr": lr, "keep_better": keep_better,
                           **recon_args})
    quant = QuantConfig(w_bits=2, a_bits=4, act_border=act_border)
    return attnround_pl.quantize(model, images, quant=quant, recon=recon,
                                 eval_data=[(images, labels)], progress=False,
                                 trainer={"accelerator": "cpu"})


def test_a_unit_that_learned_worse_keeps_round_to_nearest():
    # a learning rate of 1.0 throws the offsets about: the learned units end worse
    worse = run(keep_better=False, lr=1.0).report.units
    assert worse[0].mse_final > worse[0].mse_nearest
    kept = run(keep_better=True, lr=1.0)
    units = kept.report.units
    # the first unit sees the same inputs in both runs: the same learned state, then reverted
    assert units[0].kept == "nearest" and units[0].mse_learned == worse[0].mse_final
    for unit in units:
        assert unit.mse_final <= unit.mse_nearest, unit.name
        if unit.kept == "nearest":
            assert unit.mse_final == unit.mse_nearest  # exactly the nearest state
            assert unit.mse_learned > unit.mse_nearest
            for name in unit.layers:
                layer = quant_layers(kept)[name]
                codes = layer.weight_quantizer.nearest_codes(layer.layer.weight)
                assert torch.equal(layer.weight_quantizer.codes, codes)
        else:
            assert unit.kept == "learned" and unit.mse_learned is None
            assert "mse_learned" not in unit.to_dict()


def test_keep_best_every_freezes_the_checkpoint_with_the_lowest_error():
    # a high learning rate makes the error go up and down from step to step
    # (round-to-nearest activations: a learned border evens the first unit's error out)
    plain = run(keep_better=False, lr=0.3, act_border="nearest").report.units
    best = run(keep_better=False, lr=0.3, act_border="nearest", keep_best_every=5).report.units
    for unit in best:
        assert unit.best_step in range(5, 31, 5), unit.name
        assert unit.to_dict()["best_step"] == unit.best_step
    assert "best_step" not in plain[0].to_dict()
    # the first unit sees the same inputs in both runs, and checking does not change learning:
    # its kept state is the plain run's state after best_step steps
    first = best[0]
    assert first.best_step < 30 and first.mse_final < plain[0].mse_final
    stopped = run(keep_better=False, lr=0.3, act_border="nearest",
                  iters=first.best_step).report.units[0]
    assert first.mse_final == pytest.approx(stopped.mse_final, rel=1e-6)


def test_keep_best_every_is_refused_below_zero_in_one_line():
    with pytest.raises(SettingError, match="keep_best_every=-1 must be >= 0"):
        ReconConfig(keep_best_every=-1).validate()


def test_two_classes_get_top1_and_no_top5():
    report = run(keep_better=True, lr=4e-4).report
    assert report.quantized.top1 is not None and report.float_model.top1 is not None
    assert report.quantized.top5 is None and report.float_model.top5 is None
    written = report.to_dict()
    assert "quant_top1" in written and not [key for key in written if key.endswith("_top5")]


def test_unit_line_fits_an_80_column_terminal():
    result = UnitResult(name="features.denseblock3.denselayer24.conv2", kind="block",
                        rule="registry", layers=[], cache_mb=1.0, cache_device="cpu",
                        mse_nearest=6.863e-06, learned=True, mse_final=6.863e-06,
                        mse_learned=7.612e-06, kept="nearest", seconds=1234.5)
    line = unit_line(117, 120, result)
    assert len(line) <= LINE_WIDTH
    assert line.startswith("unit 117/120 fea~onv2: ")
    assert line.endswith(": MSE nearest 6.863e-06 kept (learned 7.612e-06), 1234.5 s")
    short = unit_line(3, 11, replace(result, name="layer1.1", kept="learned", mse_final=1e-6,
                                     seconds=2.04))
    assert short == "unit 3/11 layer1.1: MSE nearest 6.863e-06 -> 1.000e-06, 2.0 s"
