import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from doc_blocks import python_block
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from small_qnet import SmallNet, small_qnet

from attnround_pl.export import (
    STATE_FORMAT,
    TORCH_STATE_FORMAT,
    CheckpointError,
    export_state,
    load_state,
    read_state,
    state_payload,
    state_size,
)
from attnround_pl.quant import quant_layers

EXPORT_DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def _build(meta):
    return SmallNet()


def _assert_same_model(rebuilt, qnet):
    x = 3 * torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qnet(x))
    for name, layer in quant_layers(rebuilt).items():
        original = quant_layers(qnet)[name]
        assert layer.weight_quantizer.bits == original.weight_quantizer.bits
        assert torch.equal(layer.weight_quantizer.codes, original.weight_quantizer.codes)


@pytest.mark.parametrize("quant", [{"border": "aquant"}, {"w_symmetric": True},
                                   {"layer_w_bits": {"conv_a": 3, "conv_b": 6}},
                                   {"layer_w_bits": {"conv_a": 2, "dw": 5}, "w_symmetric": True}])
def test_round_trip_gives_identical_outputs(tmp_path, quant):
    qnet = small_qnet(**quant)
    path = export_state(qnet, tmp_path / "q.safetensors", qnet.quant_config, {"arch": "s"})
    rebuilt, payload = load_state(path, _build)
    assert payload["format"] == STATE_FORMAT
    _assert_same_model(rebuilt, qnet)


def test_codes_are_packed_at_their_bit_width_and_no_float_weight_is_stored(tmp_path):
    qnet = small_qnet(layer_w_bits={"conv_a": 3, "conv_b": 2})
    path = export_state(qnet, tmp_path / "q.safetensors", qnet.quant_config, {"arch": "s"})
    tensors = load_file(path)
    layers = quant_layers(qnet)
    expected_bits = {"stem.0": 8, "conv_a": 3, "conv_b": 2, "dw": 4, "head.2": 8}
    for name, bits in expected_bits.items():
        numel = layers[name].layer.weight.numel()
        packed = tensors[f"{name}.weight_codes"]
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel * bits / 8)
    assert tensors["conv_a.weight_codes"].numel() == 216  # 576 3-bit codes in 216 bytes
    assert not any(key.endswith("weight") for key in tensors)  # codes only, no float weights
    code_bytes = sum(t.numel() for k, t in tensors.items() if k.endswith("weight_codes"))
    channels = sum(m.layer.weight.shape[0] for m in layers.values())
    biases = sum(m.layer.bias.numel() for m in layers.values() if m.layer.bias is not None)
    header_bytes = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    # the data: the codes, a float32 scale and an int32 zero point per channel, float32 biases
    assert os.path.getsize(path) - header_bytes == code_bytes + 8 * channels + 4 * biases
    size = state_size(path)
    assert (size.file_bytes, size.weight_code_bytes) == (os.path.getsize(path), code_bytes)
    assert size.weight_codes == sum(m.layer.weight.numel() for m in layers.values())
    with safe_open(str(path), framework="np") as f:
        header = json.loads(f.metadata()["attnround_pl"])
    assert header["format"] == STATE_FORMAT and header["code_layout"] == "lsb-first"
    conv_b = header["layers"]["conv_b"]
    assert (conv_b["w_bits"], conv_b["shape"], conv_b["bias"]) == (2, [8, 8, 1, 1], False)


def test_payload_holds_integer_codes_border_and_signedness(tmp_path):
    qnet = small_qnet(border="aquant")
    path = export_state(qnet, tmp_path / "q.safetensors", qnet.quant_config, {"arch": "s"})
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


def test_numpy_reader_in_the_docs_rebuilds_every_layer_bit_for_bit(tmp_path, monkeypatch):
    qnet = small_qnet(layer_w_bits={"conv_a": 3, "conv_b": 2, "dw": 6}, w_symmetric=True)
    export_state(qnet, tmp_path / "quantized_state.safetensors", qnet.quant_config, {})
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(python_block(EXPORT_DOC, "state-reader"), namespace)
    weights = namespace["weights"]
    layers = quant_layers(qnet)
    assert set(weights) == set(layers)
    for name, layer in layers.items():
        expected = layer.weight_quantizer(layer.layer.weight).detach().numpy()
        assert weights[name].dtype == np.float32
        assert np.array_equal(weights[name], expected), name
    assert "conv_b: int2 [8, 8, 1, 1]" in out.getvalue()


def test_torch_state_files_of_earlier_versions_still_load(tmp_path):
    """Format 1 was ``torch.save`` of the payload (codes one a byte), as state_payload gives."""
    qnet = small_qnet(border="aquant", layer_w_bits={"conv_a": 3})
    payload = state_payload(qnet, qnet.quant_config, {"arch": "s"})
    payload["format"] = TORCH_STATE_FORMAT
    old = tmp_path / "quantized_state.pt"
    torch.save(payload, old)
    rebuilt, loaded = load_state(old, _build)
    assert loaded["format"] == TORCH_STATE_FORMAT
    _assert_same_model(rebuilt, qnet)


def _rewrite_header(path: Path, out: Path, change) -> Path:
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    header = json.loads(metadata["attnround_pl"])
    change(header, metadata)
    metadata["attnround_pl"] = json.dumps(header)
    save_file(tensors, out, metadata=metadata)
    return out


def test_corrupt_foreign_newer_and_wrong_model_are_clear_errors(tmp_path):
    qnet = small_qnet()
    path = export_state(qnet, tmp_path / "q.safetensors", qnet.quant_config, {"arch": "s"})
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file") as err:
        load_state(broken, _build)
    assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an attnround-pl quantized state file"):
        read_state(foreign)
    other = tmp_path / "other.pt"
    torch.save({"format": "something/else"}, other)
    with pytest.raises(CheckpointError, match="not an attnround-pl quantized state file"):
        read_state(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state(tmp_path / "missing.safetensors")

    def newer(header, metadata):
        metadata["format"] = "attnround-pl/state/3"

    future = _rewrite_header(path, tmp_path / "future.safetensors", newer)
    with pytest.raises(CheckpointError, match=r"format attnround-pl/state/3.*upgrade"):
        read_state(future)

    def lost_tensor(header, metadata):
        header["layers"]["conv_a"]["bias"] = True
        header["layers"]["conv_b"]["bias"] = True  # conv_b has no bias tensor

    with pytest.raises(CheckpointError, match="corrupt.*conv_b.bias"):
        read_state(_rewrite_header(path, tmp_path / "lost.safetensors", lost_tensor))

    def wider(meta):
        net = SmallNet()
        net.conv_b = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        return net

    with pytest.raises(CheckpointError, match=r"conv_b.*weight shape"):
        load_state(path, wider)

    def symmetric(header, metadata):
        header["quant"]["w_symmetric"] = True

    sym = _rewrite_header(path, tmp_path / "sym.safetensors", symmetric)
    with pytest.raises(CheckpointError, match=r"stem.0.*asymmetric grid in the state"):
        load_state(sym, _build)
    with pytest.raises(CheckpointError, match="layers only in"):
        load_state(path, lambda meta: torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3),
                                                          torch.nn.Flatten()))
