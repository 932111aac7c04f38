import pytest

from attnround_pl.export import CheckpointError
from attnround_pl.export.checkpoint import nearest_rebuild_config
from attnround_pl.quant import QuantConfig

# QuantConfig.to_dict() as the version before rounding_args wrote it (checkpoints, state
# files and report.json of earlier runs hold it)
OLD_FLAT = {
    "w_bits": 3, "a_bits": 4, "rounding": "attention", "tau": 0.25, "seed": 0,
    "first_layer_w_bits": 8, "first_layer_a_bits": 8, "last_layer_w_bits": 8,
    "last_layer_a_bits": 8, "w_per_channel": True, "w_symmetric": False,
    "adaround_reg_weight": 0.01, "adaround_beta_start": 20.0, "adaround_beta_end": 2.0,
    "adaround_warmup": 0.2, "act_border": "nearest", "drop_prob": 0.5, "layer_w_bits": None,
    "mixed": {"bit_list": [3, 4, 5], "eps2": 0.001, "budget_mb": None, "budget_bits": None},
}


def test_rebuild_config_keeps_saved_bits_and_drops_gone_keys_that_are_off():
    saved = {**QuantConfig(w_bits=3, rounding="attention").to_dict(), "act_border_global": False}
    config = nearest_rebuild_config(saved, {"layer1.0.conv1": 5})
    assert config.rounding == "nearest" and config.w_bits == 3 and config.rounding_args is None
    assert config.layer_w_bits == {"layer1.0.conv1": 5}
    config.validate()  # attention's saved tau does not follow it to nearest
    with pytest.raises(CheckpointError, match="options this version does not have"):
        nearest_rebuild_config({**saved, "act_border_global": True}, {})


def test_the_flat_keys_of_earlier_versions_move_to_their_settings():
    config = QuantConfig.from_dict(OLD_FLAT).validate()
    assert config.rounding_args == {"tau": 0.25} and config.drop.prob == 0.5
    assert config.w_bits == 3 and not hasattr(config, "mixed")
    ada = QuantConfig.from_dict({**OLD_FLAT, "rounding": "adaround", "adaround_warmup": 0.3})
    assert ada.validate().rounding_settings().warmup == 0.3
    assert ada.rounding_args == {"reg_weight": 0.01, "beta_start": 20.0, "beta_end": 2.0,
                                 "warmup": 0.3}  # tau, attention's, is left out
    assert QuantConfig.from_dict({**OLD_FLAT, "rounding": "nearest"}).validate().rounding_args \
        is None
    rebuilt = nearest_rebuild_config(OLD_FLAT, {"conv": 4})
    assert rebuilt.rounding == "nearest" and rebuilt.layer_w_bits == {"conv": 4}
    # this version's dict reads back to the same settings
    again = QuantConfig.from_dict(config.to_dict())
    assert again.rounding_settings() == config.rounding_settings() and again.drop == config.drop


def _no_search(*args, **kwargs):
    raise AssertionError("a loader ran the MSE scale search")


@pytest.mark.parametrize("fmt", ["quantized.pt", "state file"])
def test_loaders_skip_the_scale_search_and_rebuild_exact_outputs(tmp_path, monkeypatch, fmt):
    import torch
    from small_qnet import SmallNet, small_qnet

    from attnround_pl.export import export_state, load_quantized, load_state, save_quantized
    from attnround_pl.quant import weight_quant

    qnet = small_qnet(w_symmetric=fmt == "state file")
    meta = {"arch": "small", "num_classes": 5}
    if fmt == "quantized.pt":
        save_quantized(qnet, tmp_path / "q.pt", qnet.quant_config, meta)
        load, path = load_quantized, tmp_path / "q.pt"
    else:
        path = export_state(qnet, tmp_path / "state.pt", qnet.quant_config, meta)
        load = load_state
    monkeypatch.setattr(weight_quant, "search_qparams", _no_search)
    rebuilt, _ = load(path, lambda m: SmallNet())
    x = 3 * torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qnet(x))


@pytest.mark.parametrize("fmt", ["quantized.pt", "state file"])
def test_a_file_with_the_settings_of_an_earlier_version_loads(tmp_path, fmt):
    import torch
    from small_qnet import SmallNet, small_qnet

    from attnround_pl.export import export_state, load_quantized, load_state, save_quantized

    qnet = small_qnet()
    meta = {"arch": "small", "num_classes": 5}
    old = {**OLD_FLAT, "rounding": "nearest", "w_bits": 4}
    if fmt == "quantized.pt":
        path = save_quantized(qnet, tmp_path / "q.pt", qnet.quant_config, meta)
        payload = torch.load(path, weights_only=False)
        payload["quant"] = old
        torch.save(payload, path)
        rebuilt, _ = load_quantized(path, lambda m: SmallNet())
    else:
        path = export_state(qnet, tmp_path / "state.pt", old, meta)
        rebuilt, _ = load_state(path, lambda m: SmallNet())
    x = 3 * torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qnet(x))
