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
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass

import torch

WORKLOAD = (
    "float forward + backward of the embedded ResNet-20 (random weights) on random 1x28x28 "
    "images, batch 64, CPU"
)
BLOCKS, BLOCK_ITERS, WARMUP = 10, 10, 3


@dataclass(frozen=True)
class HostSpeed:
    """Milliseconds per reference iteration (the median of ``BLOCKS`` blocks), when measured."""

    ms_per_iter: float
    iters: int
    threads: int
    measured_at: str
    workload: str = WORKLOAD

    def reference_iters(self, seconds: float) -> float:
        """``seconds`` of this host in reference iterations."""
        return seconds * 1000.0 / self.ms_per_iter

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _reference_step(net: torch.nn.Module, x: torch.Tensor) -> None:
    for p in net.parameters():
        p.grad = None
    net(x).square().mean().backward()


@functools.cache
def host_speed() -> HostSpeed:
    """Measure the reference workload (103 iterations, 2-3 s on the 2-core development
    machine), once per process. The median of ten blocks of ten iterations: one slow block
    (another process woke up) does not move it. It samples the host's speed at the start; on a
    host whose load changes during a run (the development machine's speed varied by 1.8x
    within minutes) it says how fast the host was then, not throughout."""
    from ..models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_model("resnet20", weights=None).eval()
        x = torch.randn(64, 1, 28, 28)
    for _ in range(WARMUP):
        _reference_step(net, x)
    blocks = []
    for _ in range(BLOCKS):
        started = time.perf_counter()
        for _ in range(BLOCK_ITERS):
            _reference_step(net, x)
        blocks.append((time.perf_counter() - started) / BLOCK_ITERS)
    return HostSpeed(
        ms_per_iter=round(statistics.median(blocks) * 1000.0, 3),
        iters=BLOCKS * BLOCK_ITERS,
        threads=torch.get_num_threads(),
        measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
