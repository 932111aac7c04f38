"""BestState: checkpoints fall every ``every`` steps whatever a batch's size, and the state
with the lowest offered error is the one restored."""

import math

import pytest
import torch
from torch import nn

from attnround_pl.calib.best_state import BestState


def test_due_at_the_end_of_each_batch_that_holds_a_multiple_of_every():
    for steps, every in ((1, 4), (3, 4), (10, 4), (10, 250), (7, 250)):
        best = BestState([], every=every)
        ends = range(steps, 1000 + steps, steps)
        due = [done for done in ends if best.due(done, steps)]
        holding = [done for done in ends
                   if any(s % every == 0 for s in range(done - steps + 1, done + 1))]
        assert due == holding, (steps, every)
        assert len(due) == min(len(ends), 1000 // every)


def test_restore_puts_back_the_lowest_offer_and_ignores_nan():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.ones(2))
    best = BestState([a, b], every=5)
    assert best.restore() is None and best.mse == math.inf  # nothing offered: nothing changes
    assert best.offer(2.0, step=5)
    with torch.no_grad():
        a.add_(1.0)
        b.mul_(3.0)
    assert best.offer(1.0, step=10)
    with torch.no_grad():
        a.add_(1.0)
    assert not best.offer(1.5, step=15) and not best.offer(float("nan"), step=20)
    assert best.restore() == 10
    assert torch.equal(a, torch.ones(3)) and torch.equal(b, torch.full((2,), 3.0))
    assert best.mse == 1.0 and a.requires_grad  # restored in place: still the same parameters


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every=0"):
        BestState([], every=0)
