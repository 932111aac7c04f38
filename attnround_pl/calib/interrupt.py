"""Ctrl-C and SIGTERM during a calibration: stop cleanly and say how to continue.

Lightning turns a ``KeyboardInterrupt`` inside ``Trainer.fit`` into ``sys.exit(1)`` without a
word. While a calibration runs, SIGINT and SIGTERM (what ``timeout`` and job schedulers send)
raise ``CalibrationInterrupted`` instead: a ``BaseException`` that Lightning tears down and
re-raises, that ``except Exception`` does not swallow, and whose message says how many units
finished and how to resume. Files are written to a temporary name and renamed (``atomic``), so a
signal never leaves a half-written file; the last ``progress.pt`` holds every finished unit.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CalibrationInterrupted(BaseException):
    """SIGINT or SIGTERM arrived during a calibration. ``exit_status`` is the shell's
    convention, 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def explained(self, message: str) -> CalibrationInterrupted:
        """The same interruption with ``message`` (what finished, how to continue)."""
        return CalibrationInterrupted(self.signum, message)


def interruption_in(exc: BaseException) -> CalibrationInterrupted | None:
    """The ``CalibrationInterrupted`` that ``exc`` is or arose from, else None.

    A signal can land while Lightning tears a unit's trainer down (closing the TensorBoard
    writer); Lightning then finalizes the logger again, that raises ("Writer is closed"), and
    the interruption survives only as the new exception's ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CalibrationInterrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _raise(signum: int, frame: FrameType | None) -> None:
    raise CalibrationInterrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``CalibrationInterrupted``; the previous
    handlers come back after it. Signal handlers belong to the main thread: elsewhere (a
    calibration started from a worker thread) the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stopped_message(done: int, total: int | None, run_dir: str | None) -> str:
    """'stopped after unit k of n; continue with --run.resume <folder>' and its variants."""
    if total is None:
        return "stopped before the reconstruction started; nothing to resume: start the run again"
    if done == 0:
        return f"stopped before unit 1 of {total} finished; nothing to resume: start the run again"
    if run_dir is None:
        return (
            f"stopped after unit {done} of {total}; nothing was saved (give the run a folder, "
            "out_dir=..., to keep finished units)"
        )
    return f"stopped after unit {done} of {total}; continue with --run.resume {run_dir}"
