"""BRECQ's two stages (``recon.act_stage_iters``): the rounding learned with the activations
float, then the activation steps alone with the rounding fixed; resumable across the stages."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import attnround_pl
from attnround_pl.calib import ReconConfig, RunConfig, calibrate
from attnround_pl.errors import SettingError
from attnround_pl.export import read_quantized
from attnround_pl.quant import (
    QuantConfig,
    activations_off,
    calibrate_activations,
    quant_layers,
    quantize_model,
    reconstruction_loss,
)
from attnround_pl.quant.model import act_quantizers

IMAGES = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    ).eval()


def run(a_bits: int = 4, **recon_args):
    recon = ReconConfig(**{"iters": 20, "batch_size": 8, "keep_better": False, **recon_args})
    quant = QuantConfig(rounding="adaround", w_bits=2, a_bits=a_bits, first_layer_a_bits=a_bits,
                        last_layer_a_bits=a_bits)
    return attnround_pl.quantize(small_cnn(), IMAGES, quant=quant, recon=recon, progress=False,
                                 trainer={"accelerator": "cpu"})


def codes(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight_quantizer.codes for name, layer in quant_layers(model).items()}


def test_the_rounding_stage_is_a_float_activation_run_and_the_steps_stage_keeps_its_codes():
    two = run(act_stage_iters=15)
    units = two.report.units
    n = len(units) // 2
    assert n == 4 and [u.name for u in units[:n]] == [u.name for u in units[n:]]
    assert [u.stage for u in units] == ["rounding"] * n + ["activations"] * n
    assert [u.iters for u in units] == [20] * n + [15] * n
    # the rounding stage is exactly a run whose activations are float (A32 everywhere): same
    # caches, same learned rounding, unit by unit
    weights_only = run(a_bits=32)
    assert [u.mse_final for u in units[:n]] == [u.mse_final for u in weights_only.report.units]
    # ... and the steps stage changes no code
    ours, float_acts = codes(two), codes(weights_only)
    assert ours.keys() == float_acts.keys()
    for name in ours:
        assert torch.equal(ours[name], float_acts[name]), name
    # the steps learned on the error to the power p: they end below where they started
    assert all(u.learned and u.mse_final < u.mse_nearest for u in units[n:])
    assert units[n].to_dict()["stage"] == "activations"
    assert "stage" not in run(iters=2).report.units[0].to_dict()  # one pass: as before


def test_the_steps_stage_starts_from_steps_searched_on_the_weight_quantized_network():
    qmodel = quantize_model(small_cnn(), QuantConfig(w_bits=2, a_bits=4))
    calibrate_activations(qmodel, [IMAGES])
    on_float = [q.step.item() for q in act_quantizers(qmodel)]
    calibrate_activations(qmodel, [IMAGES], quantized_weights=True)
    on_quantized = [q.step.item() for q in act_quantizers(qmodel)]
    # the first layer's input does not depend on any weight; the later ones do
    assert on_quantized[0] == on_float[0] and on_quantized[1:] != on_float[1:]
    assert all(layer.weight_enabled for layer in quant_layers(qmodel).values())


def test_activations_off_restores_each_quantizers_switch():
    qmodel = quantize_model(small_cnn(), QuantConfig(w_bits=2, a_bits=4))
    calibrate_activations(qmodel, [IMAGES])
    act_quantizers(qmodel)[1].enabled = False
    with torch.no_grad():
        quantized = qmodel(IMAGES)
        with activations_off(qmodel):
            assert not any(q.enabled for q in act_quantizers(qmodel))
            float_acts = qmodel(IMAGES)
    assert [q.enabled for q in act_quantizers(qmodel)] == [True, False, True, True]
    assert not torch.equal(quantized, float_acts)


def test_the_loss_exponent_is_brecqs_lp_loss():
    pred, target = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    lp = (pred - target).abs().pow(2.4).sum(1).mean()  # BRECQ's lp_loss(pred, tgt, p=2.4)
    assert reconstruction_loss(pred, target, 2.4) == pytest.approx(lp.item(), rel=1e-5)
    assert reconstruction_loss(pred, target) == pytest.approx(
        (pred - target).pow(2).sum(1).mean().item(), rel=1e-5)


def test_a_second_stage_without_quantized_activations_is_refused_in_one_line():
    with pytest.raises(SettingError, match=r"act_stage_iters=5 .* quant.a_bits=32 keeps the "
                                           "activations float"):
        run(a_bits=32, act_stage_iters=5)
    with pytest.raises(SettingError, match="act_stage_iters=-1 must be >= 0"):
        ReconConfig(act_stage_iters=-1).validate()
    with pytest.raises(SettingError, match="act_stage_loss_p=0.0 must be > 0"):
        ReconConfig(act_stage_loss_p=0.0).validate()


@pytest.mark.parametrize("stop_after", [4, 5])  # at the end of the first stage; inside the second
def test_a_run_stopped_in_either_stage_resumes_to_the_uninterrupted_result(
        tmp_path, monkeypatch, stop_after):
    import attnround_pl.calib.pipeline as pipeline

    recon = ReconConfig(iters=6, batch_size=8, act_stage_iters=5, act_stage_loss_p=2.4)
    quant = QuantConfig(w_bits=2, a_bits=4)

    def calibrate_small(**run_args):
        config = RunConfig(out_dir=str(tmp_path), progress=False, export=[], **run_args)
        return calibrate(small_cnn(), IMAGES, quant, recon, config)

    full = calibrate_small(name="full")
    # TensorBoard: the steps' pass logs apart from the rounding pass of the same unit
    tags = EventAccumulator(str(tmp_path / "full" / "tb")).Reload().Tags()["scalars"]
    first = full.units[0].name
    assert {f"recon/{first}/loss", f"recon/{first}@steps/loss", "recon/mse_final_by_unit",
            "recon/steps_mse_final_by_unit"} <= set(tags)
    saved = pipeline.save_progress

    class CrashError(RuntimeError):
        pass

    def stop(run_dir, qmodel, results, *args):
        saved(run_dir, qmodel, results, *args)
        if len(results) == stop_after:
            raise CrashError

    monkeypatch.setattr(pipeline, "save_progress", stop)
    with pytest.raises(CrashError):
        calibrate_small(name="stopped")
    monkeypatch.setattr(pipeline, "save_progress", saved)
    resumed = calibrate_small(resume=str(tmp_path / "stopped"))
    assert resumed.resumed_after_units == stop_after
    assert [u.stage for u in resumed.units] == [u.stage for u in full.units]
    assert [u.mse_final for u in resumed.units] == [u.mse_final for u in full.units]
    first = read_quantized(tmp_path / "full" / "quantized.pt")["layers"]
    second = read_quantized(tmp_path / "stopped" / "quantized.pt")["layers"]
    for name, info in first.items():
        assert torch.equal(info["codes"], second[name]["codes"]), name
        assert info["a_step"] == second[name]["a_step"], name


def test_float_inputs_take_the_unit_inputs_from_the_float_model():
    from block_net import TwoBlocks, blocks_qnet

    from attnround_pl.calib import build_unit_data
    from attnround_pl.quant.bn_fold import fold_batchnorms

    qnet, _ = blocks_qnet()
    torch.manual_seed(0)  # the float net blocks_qnet quantized
    folded = TwoBlocks().eval()
    fold_batchnorms(folded)
    images = [torch.randn(8, 3, 12, 12)]
    quantized = build_unit_data(qnet, folded, "layer.1", images)
    from_float = build_unit_data(qnet, folded, "layer.1", images, inputs_from_float=True)
    mixing = build_unit_data(qnet, folded, "layer.1", images, float_inputs=True)
    assert torch.equal(from_float.inputs, mixing.float_inputs)
    assert not torch.equal(from_float.inputs, quantized.inputs)  # W4A4 upstream moved them
    assert torch.equal(from_float.targets, quantized.targets)


def _brecq_blocks(float_inputs: bool, seen: list | None = None, monkeypatch=None):
    """TwoBlocks through BRECQ's two passes in the peers' order; with ``seen``, each unit MSE
    call records its unit's own input quantizer's switch (None: the unit has none)."""
    from block_net import TwoBlocks

    import attnround_pl.calib.sequencer as sequencer

    if seen is not None:
        measure = sequencer.unit_mse

        def spy(unit, data):
            own = unit.input_quantizer if hasattr(unit, "input_quantizer") else None
            seen.append(None if own is None else own.enabled)
            return measure(unit, data)

        monkeypatch.setattr(sequencer, "unit_mse", spy)
    torch.manual_seed(0)
    recon = ReconConfig(iters=4, batch_size=8, keep_better=False, act_stage_iters=4,
                        act_stage_float_inputs=float_inputs, block_output_steps=True,
                        unit_blocks=1, join_end_layers=False)
    quant = QuantConfig(rounding="adaround", w_bits=2, a_bits=4, act_placement="blocks")
    return attnround_pl.quantize(TwoBlocks().eval(), torch.randn(16, 3, 12, 12), quant=quant,
                                 recon=recon, progress=False, trainer={"accelerator": "cpu"})


def test_brecqs_steps_pass_learns_on_float_inputs_with_the_units_input_quantizer_off(
        monkeypatch):
    plain = _brecq_blocks(False)
    seen: list = []
    ours = _brecq_blocks(True, seen, monkeypatch)
    units, others = ours.report.units, plain.report.units
    names = [u.name for u in units]
    assert names == ["stem.0", "layer.0", "layer.1", "fc"] * 2
    # the rounding pass is the same run; the steps pass learns from other inputs
    assert [u.mse_final for u in units[:4]] == [u.mse_final for u in others[:4]]
    assert units[6].mse_nearest != pytest.approx(others[6].mse_nearest)
    # each unit is measured twice (before, after): the rounding pass with every quantizer
    # off; in the steps pass layer.1's input quantizer, learned with layer.0, is off while
    # layer.1 learns; layer.0 learns its own (a ReLU follows the stem's conv) and the network
    # input's 8-bit quantizer stays on
    assert seen[:8] == [False] * 8
    assert seen[8:] == [True, True, True, True, False, False, True, True]
    assert all(q.enabled for q in act_quantizers(ours))  # every switch restored


def test_float_inputs_need_a_second_pass():
    with pytest.raises(SettingError, match="recon.act_stage_float_inputs=true sets the inputs "
                                           "of the second pass .* recon.act_stage_iters > 0"):
        ReconConfig(act_stage_float_inputs=True).validate()
