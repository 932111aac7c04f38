import math

import pytest
import torch

from attnround_pl.mixed.coding_length import coding_length, weight_vectors


def _direct(weight, eps2):
    w = weight_vectors(weight).double()
    n, m = w.shape
    det = torch.det(torch.eye(n, dtype=torch.float64) + n / (m * eps2) * w @ w.T)
    return 0.5 * math.log2(det.item())


@pytest.mark.parametrize("shape", [(6, 3, 1, 1), (3, 12), (5, 4, 2, 2)])  # m < n, m > n, conv
def test_matches_the_n_by_n_determinant(shape):
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.3
    for eps2 in (0.01, 0.1, 1.0):
        assert coding_length(weight, eps2) == pytest.approx(_direct(weight, eps2), rel=1e-9)


def test_weight_vectors_one_column_per_output_channel():
    weight = torch.arange(24.0).reshape(4, 3, 2)
    w = weight_vectors(weight)
    assert w.shape == (6, 4)
    assert torch.equal(w[:, 1], weight[1].flatten())


def test_larger_variance_longer_code_and_smaller_eps_longer_code():
    base = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    assert coding_length(base * 2, 0.1) > coding_length(base, 0.1)
    assert coding_length(base, 0.01) > coding_length(base, 0.1)
    assert coding_length(torch.zeros(4, 4), 0.1) == 0.0


def test_eps2_must_be_positive():
    with pytest.raises(ValueError, match="eps2=0"):
        coding_length(torch.ones(2, 2), 0)
