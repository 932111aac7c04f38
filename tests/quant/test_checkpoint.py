import pytest

from attnround_pl.quant import CheckpointError, QuantConfig
from attnround_pl.quant.checkpoint import nearest_rebuild_config


def test_rebuild_config_keeps_saved_bits_and_drops_gone_keys_that_are_off():
    saved = {**QuantConfig(w_bits=3, rounding="attention").to_dict(), "act_border_global": False}
    config = nearest_rebuild_config(saved, {"layer1.0.conv1": 5})
    assert config.rounding == "nearest" and config.w_bits == 3
    assert config.layer_w_bits == {"layer1.0.conv1": 5} and not config.mixed.enabled
    with pytest.raises(CheckpointError, match="options this version does not have"):
        nearest_rebuild_config({**saved, "act_border_global": True}, {})


def _no_search(*args, **kwargs):
    raise AssertionError("a loader ran the MSE scale search")


@pytest.mark.parametrize("fmt", ["quantized.pt", "state file"])
def test_loaders_skip_the_scale_search_and_rebuild_exact_outputs(tmp_path, monkeypatch, fmt):
    import torch
    from small_qnet import SmallNet, small_qnet

    from attnround_pl.export import export_state, load_state
    from attnround_pl.quant import load_quantized, save_quantized, weight_quant

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
