import pytest
import torch

from attnround_pl.calib import FloatModel, ReconConfig, RunConfig, build_unit_data, calibrate
from attnround_pl.calib import sequencer as sequencer_module
from attnround_pl.calib.memory import (
    CacheMemoryError,
    available_bytes,
    check_unit_fits,
    estimate_cache_bytes,
    estimate_step_bytes,
)
from attnround_pl.calib.output_term import tail_graphs, tail_module
from attnround_pl.calib.resume import PROGRESS
from attnround_pl.calib.sequencer import BlockSequencer
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.models import build_model, split_units
from attnround_pl.quant import QuantConfig, calibrate_activations, fold_batchnorms, quantize_model


def test_estimate_matches_the_cache_it_predicts():
    torch.manual_seed(0)
    net = build_model("resnet20", weights=None).eval()
    q = quantize_model(net, QuantConfig(rounding="nearest"))
    batches = [torch.randn(7, 1, 28, 28), torch.randn(5, 1, 28, 28)]
    calibrate_activations(q, batches)
    fold_batchnorms(net)
    for unit in ("conv1", "layer1.0", "layer3.2", "fc"):
        data = build_unit_data(q, net, unit, batches)
        peak = data.inputs.nbytes + 2 * data.targets.nbytes
        assert estimate_cache_bytes(q, net, unit, batches) == peak, unit


def test_check_names_unit_bytes_and_keys():
    check_unit_fits("layer1.0", 500, 300, 1000, "")  # 80 % fits
    check_unit_fits("layer1.0", 10**12, 0, None, "")  # unknown: no guard
    with pytest.raises(CacheMemoryError) as err:
        check_unit_fits("layer2.0", 3 * 2**30, 2**30, 2**30, "continue with --run.resume R")
    text = str(err.value)
    assert "unit 'layer2.0' needs about 4096 MiB (3072 MiB to cache" in text
    assert "1024 MiB for a training step" in text and "only 1024 MiB" in text
    assert "--recon.batch_size" in text and "--data.init_args.calib_size" in text
    assert "--run.resume R" in text
    assert available_bytes() is None or available_bytes() > 0


def test_step_estimate_counts_the_saved_activations_per_sample():
    torch.manual_seed(0)
    net = build_model("resnet20", weights=None).eval()
    q = quantize_model(net, QuantConfig(w_bits=4, a_bits=4))
    calibrate_activations(q, [torch.randn(8, 1, 28, 28)])
    fold_batchnorms(net)
    data = build_unit_data(q, net, "layer1.0", [torch.randn(2, 1, 28, 28)])
    block = q.get_submodule("layer1.0")
    small, big = (estimate_step_bytes(block, data.inputs, b) for b in (64, 128))
    per_sample = (big - small) / 64 / 2  # STEP_FACTOR 2
    activation = 16 * 28 * 28 * 4  # one float32 feature map of the block, one sample
    # two convs with quantized inputs, BN-free ReLUs and the residual: a few maps a sample
    assert 2 * activation <= per_sample <= 20 * activation
    assert small > 64 * 2 * 2 * activation


def test_the_step_estimate_adds_the_float_tail_with_the_output_term():
    torch.manual_seed(0)
    net = build_model("resnet20", weights=None).eval()
    q = quantize_model(net, QuantConfig(w_bits=4, a_bits=4))
    batches = [torch.randn(8, 1, 28, 28)]
    calibrate_activations(q, batches)
    fold_batchnorms(net)
    units = split_units(q)

    def unit_bytes(weight: float) -> list[tuple[int, int]]:
        sequencer = BlockSequencer(q, net, units, batches, ReconConfig(output_weight=weight),
                                   make_trainer=None)
        return [sequencer.unit_bytes(u) for u in units]

    plain, with_term = unit_bytes(0.0), unit_bytes(10.0)
    tail = tail_module(net, tail_graphs(net, units)[0])
    probe = build_unit_data(q, net, units[0], [batches[0][:2]]).targets.requires_grad_()
    assert with_term[0] == (plain[0][0], plain[0][1] + estimate_step_bytes(tail, probe, 64))
    # the float network after a unit shrinks along the network: the first unit's is the largest
    extra = [w[1] - p[1] for p, w in zip(plain, with_term, strict=True)]
    assert extra[0] > extra[-1] > 0


def test_guard_stops_before_the_cache_and_keeps_finished_units(tmp_path, tiny_fmnist,
                                                                monkeypatch):
    calls = {"n": 0}

    def shrinking() -> int:
        calls["n"] += 1
        return 2**40 if calls["n"] <= 4 else 1000  # the preflight, then 3 units; not the 4th

    monkeypatch.setattr(sequencer_module, "available_bytes", shrinking)
    data = FashionMNISTDataModule(root=str(tiny_fmnist), calib_size=20, batch_size=30)
    run = RunConfig(out_dir=str(tmp_path), name="r", progress=False, eval_float=False,
                    eval_nearest=False)
    args = (FloatModel("resnet20", weights=None), data, QuantConfig(w_bits=3),
            ReconConfig(iters=2, batch_size=4))
    with pytest.raises(CacheMemoryError,
                       match=r"unit 'layer3.0..layer3.1' needs about .* --run.resume"):
        calibrate(*args, run, {"accelerator": "cpu"})
    assert torch.load(tmp_path / "r" / PROGRESS, weights_only=True)["units"] == [
        "conv1..layer1.1", "layer1.2..layer2.0", "layer2.1..layer2.2"]
    monkeypatch.setattr(sequencer_module, "available_bytes", lambda: 2**40)
    resumed = RunConfig(progress=False, eval_float=False, eval_nearest=False,
                        resume=str(tmp_path / "r"))
    report = calibrate(*args, resumed, {"accelerator": "cpu"})
    assert report.resumed_after_units == 3 and len(report.units) == 5
