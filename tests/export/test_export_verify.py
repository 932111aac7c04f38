import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from small_qnet import small_qnet

from attnround_pl.export import (
    INT4_OPSET,
    OPSET,
    compare_with_onnx,
    export_onnx,
    first_code_divergence,
    max_output_difference,
)
from attnround_pl.export.qdq_onnx import onnx_name


def _batches(n: int = 3):
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(20, 3, 16, 16, generator=gen), torch.randint(5, (20,), generator=gen))
            for _ in range(n)]


@pytest.mark.parametrize("opset", [OPSET, INT4_OPSET])
def test_compare_with_onnx_counts_images_accuracy_and_mismatches(tmp_path, opset):
    qnet = small_qnet(border="aquant")
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx", opset=opset)
    batches = _batches()
    cmp = compare_with_onnx(qnet, path, batches)
    with torch.no_grad():
        correct = sum(int((qnet(x).argmax(1) == y).sum()) for x, y in batches)
    assert cmp.images == 60
    assert cmp.torch_top1 == pytest.approx(100 * correct / 60)
    assert cmp.onnx_top1 == cmp.torch_top1 and cmp.argmax_mismatch == 0
    assert 0 <= cmp.max_abs_logit_diff < 1e-4
    assert cmp.divergence is None or cmp.divergence.float_noise
    # a different PyTorch model: the comparison sees it
    other = small_qnet(seed=5, border="aquant")
    worse = compare_with_onnx(other, path, batches)
    assert worse.argmax_mismatch > 0 and worse.max_abs_logit_diff > 0.01
    with pytest.raises(ValueError, match="no images"):
        compare_with_onnx(qnet, path, [])


def test_max_output_difference():
    qnet = small_qnet()
    assert max_output_difference(qnet, copy.deepcopy(qnet), _batches(2)) == (40, 0.0)
    shifted = copy.deepcopy(qnet)
    with torch.no_grad():
        shifted.head[2].layer.bias += 0.25
    images, diff = max_output_difference(qnet, shifted, _batches(1))
    assert images == 20 and diff == pytest.approx(0.25, abs=1e-5)


def _scale_activation_step(path, layer: str, factor: float, out):
    """A copy of the ONNX file whose input quantizer of ``layer`` has its scale times ``factor``."""
    model = onnx.load(str(path))
    name = onnx_name(f"{layer}.a_scale")
    (init,) = [i for i in model.graph.initializer if i.name == name]
    scaled = numpy_helper.to_array(init) * np.float32(factor)
    init.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), name))
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("opset", [OPSET, INT4_OPSET])
def test_first_code_divergence_is_none_when_every_code_agrees(tmp_path, opset):
    qnet = small_qnet()
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx", opset=opset)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert first_code_divergence(qnet, path, x) is None


def test_first_code_divergence_refuses_an_onnx_file_of_another_model(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])], "other",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(ValueError, match="no QuantizeLinear for any of the model's 5 activation"):
        first_code_divergence(small_qnet(), path, torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize(("opset", "code_type"),
                         [(OPSET, onnx.TensorProto.UINT8), (INT4_OPSET, onnx.TensorProto.UINT4)])
def test_first_code_divergence_names_a_wrong_scale_as_an_export_fault(tmp_path, opset, code_type):
    qnet = small_qnet()
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx", opset=opset)
    # conv_b's codes: uint4 at opset 21, read back through a Cast (onnxruntime returns no uint4)
    zero = onnx_name("conv_b.a_zero_point")
    assert {t.name: t.data_type for t in onnx.load(path).graph.initializer}[zero] == code_type
    bad = _scale_activation_step(path, "conv_b", 1.3, tmp_path / "bad.onnx")
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    div = first_code_divergence(qnet, bad, x)
    # the stem and conv_a quantizers come first in the graph and still agree
    assert (div.layer, div.index, div.quantizers) == ("conv_b", 2, 5)
    assert div.elements == 8 * 8 * 16 * 16 and div.differing > 100
    assert div.max_tie_distance > 0.1 and not div.float_noise
    assert "export fault" in div.explain() and "'conv_b'" in div.explain()
    # compare_with_onnx runs the same diagnosis on the images that differ most
    cmp = compare_with_onnx(qnet, bad, _batches())
    assert cmp.max_abs_logit_diff > 1e-3 and cmp.divergence.layer == "conv_b"
    assert cmp.as_dict()["divergence"]["layer"] == "conv_b"


def test_first_code_divergence_calls_a_flipped_tie_float_noise(tmp_path):
    qnet = small_qnet()
    stem = qnet.stem[0].input_quantizer
    stem.step.data.fill_(1 / 16)  # a power of two: x = (n + 0.5) / 16 gives x / s = n + 0.5 exactly
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx")
    # onnxruntime's scale a hair smaller: every tie rounds away from zero there, to even here
    nudged = _scale_activation_step(path, "stem.0", 1 - 1e-5, tmp_path / "nudged.onnx")
    n = torch.randint(-40, 40, (4, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    div = first_code_divergence(qnet, nudged, (n + 0.5) / 16)
    assert (div.layer, div.index) == ("stem.0", 0)
    # the ties where round-half-to-even goes toward zero: n even and >= 0, n odd and < 0
    toward_zero = ((n >= 0) & (n % 2 == 0)) | ((n < 0) & (n % 2 != 0))
    assert div.differing == int(toward_zero.sum()) and div.elements == n.numel()
    assert div.max_tie_distance == 0.0 and div.float_noise
    # rows: PyTorch runs the whole batch, both sides compare only these images
    rows = torch.tensor([3, 1])
    some = first_code_divergence(qnet, nudged, (n + 0.5) / 16, rows)
    assert some.differing == int(toward_zero[rows].sum()) and some.elements == n[rows].numel()
    assert "all exactly on a rounding tie (x/s = n + 0.5): float noise" in div.explain()
