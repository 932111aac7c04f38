"""Host speed index: how fast this machine runs a fixed small reference workload, so that
calibration times from hosts of different speed can be compared.

Hosts of the same description differ by up to 1.8x here. Every report records the wall time of
one iteration of the reference workload (the float forward + backward of the embedded ResNet-20,
random weights, on random 28x28 images at batch 64: the work a calibration of the main job does
besides quantizing) and the calibration time divided by it: ``calib_reference_iters``, the
calibration in reference iterations, which is what to compare across hosts. The workload runs
on the CPU with torch's current thread settings and does not touch the global random state.
It is measured once per process, at the start of its first calibration (the command line runs
one calibration per process; a Python session reuses the first measurement).

A host's speed also moves during a run (the development machine's by up to 1.8x within
minutes), so a run re-samples the index briefly (``sample_ms``, 10 iterations) after each unit
that ends at least ``MIN_SEGMENT_S`` seconds of calibration after the last sample
(``ReferenceClock``): each such segment of calibration time is converted at the mean of the
index at its two ends, and the rest after the last sample at the last sample's index. The
sampling is not calibration time.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

WORKLOAD = (
    "float forward + backward of the embedded ResNet-20 (random weights) on random 1x28x28 "
    "images, batch 64, CPU"
)
BLOCKS, BLOCK_ITERS, WARMUP = 10, 10, 3
SAMPLE_BLOCKS, SAMPLE_ITERS = 3, 3  # a re-sample during a run: one warm-up and 9 timed, ~0.6 s
MIN_SEGMENT_S = 10.0  # re-sample after a unit only this many calibration seconds after the last


@dataclass(frozen=True)
class HostSpeed:
    """Milliseconds per reference iteration (the median of ``BLOCKS`` blocks), when measured;
    ``samples``: the re-samples during the run, ``(calibration second, ms per iteration)``."""

    ms_per_iter: float
    iters: int
    threads: int
    measured_at: str
    workload: str = WORKLOAD
    samples: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:  # report.json gives lists
        object.__setattr__(self, "samples", tuple((float(t), float(ms)) for t, ms in self.samples))

    def reference_iters(self, seconds: float) -> float:
        """``seconds`` of this host in reference iterations."""
        return seconds * 1000.0 / self.ms_per_iter

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["samples"] = [list(pair) for pair in self.samples]
        if not self.samples:  # reports without re-samples keep their earlier layout
            del out["samples"]
        return out


def _reference_step(net: torch.nn.Module, x: torch.Tensor) -> None:
    for p in net.parameters():
        p.grad = None
    net(x).square().mean().backward()


@functools.cache
def _workload() -> tuple[torch.nn.Module, torch.Tensor]:
    from ..models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_model("resnet20", weights=None).eval()
        x = torch.randn(64, 1, 28, 28)
    return net, x


def _median_ms(blocks: int, block_iters: int, warmup: int) -> float:
    net, x = _workload()
    for _ in range(warmup):
        _reference_step(net, x)
    times = []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(block_iters):
            _reference_step(net, x)
        times.append((time.perf_counter() - started) / block_iters)
    return round(statistics.median(times) * 1000.0, 3)


@functools.cache
def host_speed() -> HostSpeed:
    """Measure the reference workload (103 iterations, 2-3 s on the 2-core development
    machine), once per process. The median of ten blocks of ten iterations: one slow block
    (another process woke up) does not move it. It says how fast the host was at the start;
    ``ReferenceClock`` follows it through a run."""
    return HostSpeed(
        ms_per_iter=_median_ms(BLOCKS, BLOCK_ITERS, WARMUP),
        iters=BLOCKS * BLOCK_ITERS,
        threads=torch.get_num_threads(),
        measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


def sample_ms() -> float:
    """A brief re-sample of the index (one warm-up and the median of three blocks of three
    iterations, about 0.6 s on the 2-core development machine)."""
    return _median_ms(SAMPLE_BLOCKS, SAMPLE_ITERS, 1)


class ReferenceClock:
    """A run's calibration time in reference iterations, the index re-sampled through the run.

    ``lap(second)`` at the end of each unit (``second``: calibration seconds so far) re-samples
    when at least ``min_segment_s`` (default ``MIN_SEGMENT_S``) passed since the last sample and
    converts that segment at the mean of the index at its two ends; ``reference_iters(total)``
    adds the rest at the last sample's index. ``sample``: the re-sampling function (default
    ``sample_ms``).
    """

    def __init__(self, start: HostSpeed, min_segment_s: float | None = None,
                 sample: Callable[[], float] | None = None) -> None:
        self.start = start
        self.min_segment_s = MIN_SEGMENT_S if min_segment_s is None else min_segment_s
        self._sample = sample_ms if sample is None else sample
        self.samples: list[tuple[float, float]] = []
        self._iters, self._last = 0.0, (0.0, start.ms_per_iter)

    def lap(self, second: float) -> float:
        """A unit ended at calibration second ``second``: re-sample if due. Returns the wall
        seconds the sample took (0.0 when none was due), which are not calibration time."""
        last_second, last_ms = self._last
        if second - last_second < self.min_segment_s:
            return 0.0
        began = time.perf_counter()
        ms = self._sample()
        self._iters += (second - last_second) * 1000.0 / ((last_ms + ms) / 2.0)
        self._last = (second, ms)
        self.samples.append((round(second, 2), ms))
        return time.perf_counter() - began

    def reference_iters(self, seconds: float) -> float:
        """``seconds`` of calibration (the run's total) in reference iterations."""
        last_second, last_ms = self._last
        return self._iters + max(seconds - last_second, 0.0) * 1000.0 / last_ms

    def speed(self) -> HostSpeed:
        """The start's measurement with the samples taken since."""
        return dataclasses.replace(self.start, samples=tuple(self.samples))
