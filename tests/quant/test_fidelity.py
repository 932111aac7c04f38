import math

import pytest
import torch

from attnround_pl.quant.fidelity import FidelityStats, cosine_per_sample, output_tensors, sqnr_db


def test_sqnr_cosine_and_max_diff_match_their_definitions():
    ref = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    test = torch.tensor([[3.0, 4.5], [0.0, 1.0]])
    fid = FidelityStats().add(ref, test).result()
    # signal 9 + 16 + 1 = 26, noise 0.25 + 1 + 1 = 2.25
    assert fid.sqnr_db == pytest.approx(10 * math.log10(26 / 2.25))
    cos0 = (9 + 18) / (5 * math.hypot(3, 4.5))
    assert fid.cosine == pytest.approx((cos0 + 0.0) / 2)
    assert fid.max_abs_diff == pytest.approx(1.0)
    assert fid.samples == 2


def test_batches_add_up_to_the_whole():
    torch.manual_seed(0)
    ref, test = torch.randn(10, 3, 4), torch.randn(10, 3, 4)
    whole = FidelityStats().add(ref, test).result()
    parts = FidelityStats().add(ref[:3], test[:3]).merge(FidelityStats().add(ref[3:], test[3:]))
    assert parts.result().sqnr_db == pytest.approx(whole.sqnr_db)
    assert parts.result().cosine == pytest.approx(whole.cosine)
    assert parts.result().max_abs_diff == whole.max_abs_diff


def test_edge_cases_equal_and_zero():
    x = torch.ones(2, 3)
    assert FidelityStats().add(x, x).result().sqnr_db == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf
    zeros = torch.zeros(2, 3)
    assert cosine_per_sample(zeros, zeros).tolist() == [1.0, 1.0]
    assert cosine_per_sample(zeros, x).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="cannot compare shapes"):
        FidelityStats().add(x, torch.ones(3, 2))
    with pytest.raises(ValueError, match="no samples"):
        FidelityStats().result()


def test_output_tensors_names_outputs_and_refuses_tuples():
    t = torch.zeros(1)
    assert list(output_tensors(t)) == ["output"]
    assert list(output_tensors({"out": t, "aux": t})) == ["out", "aux"]
    with pytest.raises(TypeError, match="returned tuple"):
        output_tensors((t, t))
