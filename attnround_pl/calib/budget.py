"""The adaptive budget between units (``recon.plateau_gain``, issue 34's lever).

With a fixed budget every unit runs ``recon.iters`` steps. With the adaptive one a unit stops
once its loss has stopped falling, and the steps it did not use go to the units after it: each
unit may run up to ``recon.iters`` plus every step the units before it saved, as long as its
loss still falls. The total never exceeds the fixed budget's.

"Still falls" is judged on windows of ``window_steps(iters)`` steps (an eighth of the budget:
250 of 2,000): after each window from the second on, the mean training loss over that window is
compared with the window before's; a fall by less than the fraction ``gain`` of it ends the unit.
The training loss is the step's output error on its batch of the unit's cache, as the unit
learns (hard rounding, so it is the error the frozen unit would have on those samples, up to
QDrop's dropping where that is on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor

from .distributed import rank_world, reduce_sums
from .report import UnitResult

WINDOWS = 8  # a unit's nominal budget holds this many windows
MIN_WINDOW = 10  # steps: below, one batch's noise decides


def window_steps(iters: int) -> int:
    """Steps per window of a unit with a nominal budget of ``iters``."""
    return max(MIN_WINDOW, iters // WINDOWS)


def unit_budget(iters: int, done: Iterable[UnitResult]) -> int:
    """The most steps the next unit may run: ``iters`` plus what the learned units in ``done``
    left of theirs (each had ``iters``; one that ran longer used steps saved before it)."""
    learned = [r for r in done if r.learned]
    return iters + sum(iters - r.iters for r in learned)


@dataclass
class Plateau:
    """Tells a unit's fit when its loss has stopped falling.

    ``add(loss)`` after every step (a 0-dim tensor, summed on its device and read once a
    window). Under DDP the window's sum is averaged over the ranks first (each rank's loss is
    weighted by its share of the global batch, so that is the global batch's loss), and every
    rank stops at the same step."""

    window: int
    gain: float
    _sum: Tensor | None = field(default=None, init=False)
    _count: int = field(default=0, init=False)
    _previous: float | None = field(default=None, init=False)

    def add(self, loss: Tensor) -> bool:
        """Count one step's loss; True when the window it ends shows no fall of ``gain``."""
        loss = loss.detach()
        self._sum = loss.clone() if self._sum is None else self._sum.add_(loss)
        self._count += 1
        if self._count < self.window:
            return False
        # the sum over the ranks is world x the global batch's (each rank's loss is weighted
        # by world x its share of the batch)
        total = reduce_sums([float(self._sum)], self._sum.device)[0]
        mean = total / (rank_world()[1] * self._count)
        self._sum, self._count = None, 0
        previous, self._previous = self._previous, mean
        return previous is not None and mean > previous * (1.0 - self.gain)

