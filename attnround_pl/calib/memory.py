"""Memory guard: estimate a unit's activation cache before building it, and stop with a clear
error (unit, bytes, the key to change) instead of meeting the OOM killer."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..errors import InputError
from ..models import Unit
from .cache import build_unit_data

GUARD_FRACTION = 0.8  # of the available memory a unit's cache may take at its peak


class CacheMemoryError(InputError, MemoryError):
    """A unit's activation cache would not fit in the memory left."""


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, capped by a cgroup v2 limit when one
    is set; None where neither is readable (non-Linux)."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            left = int(limit) - used
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def estimate_cache_bytes(
    qmodel: nn.Module, float_model: nn.Module, unit: Unit | str, batches: list[Tensor]
) -> int:
    """Peak bytes of building the unit's cache (``unit`` as for ``build_unit_data``): inputs
    held while the targets are captured and concatenated (targets twice). Measured on one
    sample, scaled to all samples."""
    one = build_unit_data(qmodel, float_model, unit, [batches[0][:1]])
    x, y = one.inputs, one.targets
    samples = sum(len(b) for b in batches)
    per_sample = x.element_size() * x[0].numel() + 2 * y.element_size() * y[0].numel()
    return per_sample * samples


def check_cache_fits(unit: str, needed: int, available: int | None, resume_hint: str) -> None:
    """Raise CacheMemoryError when ``needed`` exceeds GUARD_FRACTION of ``available``."""
    if available is None or needed <= GUARD_FRACTION * available:
        return
    mib = 2**20
    raise CacheMemoryError(
        f"unit '{unit}' needs about {needed / mib:.0f} MiB to cache its inputs and targets, "
        f"but only {available / mib:.0f} MiB of memory is available (at most "
        f"{GUARD_FRACTION:.0%} is used): lower --data.init_args.calib_size or free memory. "
        f"{resume_hint}"
    )
