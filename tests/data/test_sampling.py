import pytest

from attnround_pl.data import balanced_indices


def test_balanced_and_seeded():
    targets = [i % 10 for i in range(6000)]
    a = balanced_indices(targets, 1024, seed=0)
    assert len(a) == len(set(a)) == 1024
    counts = [sum(targets[i] == c for i in a) for c in range(10)]
    assert counts == [103] * 4 + [102] * 6
    assert a == balanced_indices(targets, 1024, seed=0)
    assert a != balanced_indices(targets, 1024, seed=1)


def test_too_few_images():
    with pytest.raises(ValueError, match="asked for 50 calibration images, the data set holds 20"):
        balanced_indices([0, 1] * 10, 50, 0)
    with pytest.raises(ValueError, match="class 1 has 2 images, 5 needed"):
        balanced_indices([0] * 20 + [1] * 2, 10, 0)
