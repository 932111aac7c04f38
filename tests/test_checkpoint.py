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
