import copy

import pytest
import torch
from small_qnet import small_qnet

from attnround_pl.export import compare_with_onnx, export_onnx, max_output_difference


def _batches(n: int = 3):
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(20, 3, 16, 16, generator=gen), torch.randint(5, (20,), generator=gen))
            for _ in range(n)]  # fmt: skip


def test_compare_with_onnx_counts_images_accuracy_and_mismatches(tmp_path):
    qnet = small_qnet(border="aquant")
    path = export_onnx(qnet, torch.zeros(1, 3, 16, 16), tmp_path / "net.onnx")
    batches = _batches()
    cmp = compare_with_onnx(qnet, path, batches)
    with torch.no_grad():
        correct = sum(int((qnet(x).argmax(1) == y).sum()) for x, y in batches)
    assert cmp.images == 60
    assert cmp.torch_top1 == pytest.approx(100 * correct / 60)
    assert cmp.onnx_top1 == cmp.torch_top1 and cmp.argmax_mismatch == 0
    assert 0 <= cmp.max_abs_logit_diff < 1e-4
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
