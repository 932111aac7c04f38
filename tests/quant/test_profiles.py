"""quant.profile: 'tensorrt' sets signed symmetric 8-bit grids and refuses, in one line naming
the key, every setting TensorRT's explicit quantization does not take."""

import pytest
import torch
from torch import nn

from attnround_pl.quant import (
    ActQuantizer,
    QuantConfig,
    QuantConfigError,
    WeightQuantizer,
    calibrate_activations,
    quantize_model,
)
from attnround_pl.quant.profiles import PROFILES, TENSORRT_DOCS, check_mixed_bits

TRT = {"w_bits": 8, "a_bits": 8, "profile": "tensorrt"}


def _refusal(**settings) -> str:
    with pytest.raises(QuantConfigError) as err:
        QuantConfig(**settings).validate()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_an_unknown_profile_lists_the_valid_ones():
    message = _refusal(profile="tensorrt8")
    assert message == "unknown profile 'tensorrt8'; valid: default, tensorrt"
    assert PROFILES == ("default", "tensorrt")


@pytest.mark.parametrize(("settings", "named"), [
    ({"w_bits": 4}, "w_bits=4"),
    ({"a_bits": 4}, "a_bits=4"),
    ({"a_bits": 32}, "a_bits=32"),
    ({"first_layer_w_bits": 6}, "first_layer_w_bits=6"),
    ({"first_layer_a_bits": 32}, "first_layer_a_bits=32"),
    ({"last_layer_w_bits": 4}, "last_layer_w_bits=4"),
    ({"last_layer_a_bits": 7}, "last_layer_a_bits=7"),
    ({"layer_w_bits": {"layer1.0.conv1": 4}}, "layer_w_bits['layer1.0.conv1']=4"),
    ({"w_per_channel": False}, "w_per_channel=False"),
    ({"act_border": "aquant"}, "act_border='aquant'"),
])
def test_settings_tensorrt_does_not_take_are_one_line_naming_the_key(settings, named):
    message = _refusal(**{**TRT, **settings})
    assert message.startswith(f"{named} is not allowed with profile 'tensorrt': ")
    if "bits" in named:
        assert "INT8" in message and "use 8" in message


def test_int4_is_refused_with_tensorrt_s_reason():
    message = _refusal(**{**TRT, "w_bits": 4})
    assert "weight-only" in message and "per-block" in message
    assert "schemes" in TENSORRT_DOCS and TENSORRT_DOCS["schemes"].startswith("https://docs.nvidia")


def test_the_profile_implies_symmetric_weights_and_records_them():
    config = QuantConfig(**TRT).validate()
    assert config.w_symmetric is True and config.w_per_channel is True
    saved = config.to_dict()
    assert saved["profile"] == "tensorrt" and saved["w_symmetric"] is True
    assert QuantConfig.from_dict(saved).validate().to_dict() == saved
    later = QuantConfig(w_bits=8, a_bits=8)
    later.profile = "tensorrt"  # set after construction: validate applies it
    assert later.validate().w_symmetric is True


def test_old_dicts_without_the_key_read_as_the_default_profile():
    saved = QuantConfig(w_bits=3).to_dict()
    del saved["profile"]
    config = QuantConfig.from_dict(saved).validate()
    assert config.profile == "default" and config.w_symmetric is False


def test_mixed_bits_other_than_8_are_refused_before_the_allocation():
    check_mixed_bits("tensorrt", None)
    check_mixed_bits("tensorrt", [8])
    check_mixed_bits("default", [3, 4])
    with pytest.raises(QuantConfigError, match=r"^mixed.bit_list=\[4, 8\] is not allowed"):
        check_mixed_bits("tensorrt", [4, 8])


class _ReluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def test_quantized_model_has_signed_grids_everywhere():
    torch.manual_seed(0)
    net = _ReluNet().eval()
    batches = [torch.randn(4, 3, 8, 8)]
    default = quantize_model(net, QuantConfig(w_bits=8, a_bits=8, rounding="nearest"))
    calibrate_activations(default, batches)
    assert not default.conv2.input_quantizer.signed  # after a ReLU: uint8 by default
    qnet = quantize_model(net, QuantConfig(**TRT, rounding="nearest"))
    calibrate_activations(qnet, batches)
    acts = [m for m in qnet.modules() if isinstance(m, ActQuantizer)]
    weights = [m for m in qnet.modules() if isinstance(m, WeightQuantizer)]
    assert len(acts) == len(weights) == 3
    assert all(a.signed is True and a.bits == 8 for a in acts)
    assert all(w.symmetric and w.per_channel and w.bits == 8 for w in weights)
    assert all(torch.count_nonzero(w.zero_point) == 0 for w in weights)
    with pytest.raises(QuantConfigError, match=r"^layer_w_bits\['conv2'\]=6 is not allowed"):
        quantize_model(net, QuantConfig(**TRT), layer_w_bits={"conv2": 6})
