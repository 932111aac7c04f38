import pytest
import torch
from small_qnet import SmallNet, small_qnet

from attnround_pl.export import CheckpointError, export_state, load_state, read_state
from attnround_pl.quant import quant_layers


def _build(meta):
    return SmallNet()


@pytest.mark.parametrize("quant", [{"border": "aquant"}, {"w_symmetric": True},
                                   {"layer_w_bits": {"conv_a": 3, "conv_b": 6}}])
def test_round_trip_gives_identical_outputs(tmp_path, quant):
    qnet = small_qnet(**quant)
    path = export_state(qnet, tmp_path / "state.pt", qnet.quant_config, {"arch": "s"})
    rebuilt, payload = load_state(path, _build)
    x = 3 * torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qnet(x))
    for name, layer in quant_layers(rebuilt).items():
        original = quant_layers(qnet)[name]
        assert layer.weight_quantizer.bits == original.weight_quantizer.bits
        assert torch.equal(layer.weight_quantizer.codes, original.weight_quantizer.codes)


def test_file_holds_integer_codes_and_no_float_weights(tmp_path):
    qnet = small_qnet(border="aquant")
    path = export_state(qnet, tmp_path / "state.pt", qnet.quant_config, {"arch": "s"})
    payload = read_state(path)
    conv = payload["layers"]["conv_a"]
    assert conv["codes"].dtype == torch.uint8 and int(conv["codes"].max()) <= 15
    assert conv["zero_point"].dtype == torch.int32 and conv["scale"].shape == (8,)
    assert (conv["w_bits"], conv["a_bits"], conv["a_signed"]) == (4, 4, False)
    border = quant_layers(qnet)["conv_a"].input_quantizer.border
    k, c = border.effective()
    assert torch.allclose(conv["border"]["slope"], 1 - k)
    assert torch.equal(conv["border"]["offset"], c)
    assert payload["layers"]["stem.0"]["a_signed"] is True
    assert payload["other"] == {}  # BatchNorm folded: nothing float left outside the layers
    assert not any(key.endswith("layer.weight") for key in payload["layers"]["conv_a"])


def test_corrupt_wrong_format_and_wrong_model_are_clear_errors(tmp_path):
    qnet = small_qnet()
    path = export_state(qnet, tmp_path / "state.pt", qnet.quant_config, {"arch": "s"})
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state(broken, _build)
    other = tmp_path / "other.pt"
    torch.save({"format": "something/else"}, other)
    with pytest.raises(CheckpointError, match="not an attnround-pl quantized state file"):
        read_state(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state(tmp_path / "missing.pt")

    def wider(meta):
        net = SmallNet()
        net.conv_b = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        return net

    with pytest.raises(CheckpointError, match=r"conv_b.*weight shape"):
        load_state(path, wider)
    payload = read_state(path)
    payload["quant"]["w_symmetric"] = True
    torch.save(payload, other)
    with pytest.raises(CheckpointError, match=r"stem.0.*asymmetric grid in the state"):
        load_state(other, _build)
    with pytest.raises(CheckpointError, match="layers only in"):
        load_state(path, lambda meta: torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3),
                                                          torch.nn.Flatten()))
