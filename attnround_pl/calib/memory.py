"""Memory guard: estimate what a unit needs before building its cache (the cache itself and a
training step at the batch size), and stop with a clear error (unit, bytes, the keys to change)
instead of meeting the OOM killer."""

from __future__ import annotations

from pathlib import Path

import torch
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
    qmodel: nn.Module, float_model: nn.Module, unit: Unit | str, batches: list[Tensor],
    float_inputs: bool = False, fisher: bool = False,
) -> int:
    """Peak bytes of building the unit's cache (``unit`` and ``float_inputs`` as for
    ``build_unit_data``): inputs held while the targets are captured and concatenated (targets
    twice), the float inputs twice as well, and with ``fisher`` the targets' weights
    (``calib.fisher``) twice too. Measured on one sample, scaled to all samples."""
    one = build_unit_data(qmodel, float_model, unit, [batches[0][:1]], float_inputs=float_inputs)
    x, y = one.inputs, one.targets
    samples = sum(len(b) for b in batches)
    per_sample = x.element_size() * x[0].numel() + 2 * y.element_size() * y[0].numel()
    if one.float_inputs is not None:
        per_sample += 2 * x.element_size() * x[0].numel()
    if fisher:
        per_sample += 2 * y.element_size() * y[0].numel()
    return per_sample * samples


# A step's peak over what its forward saves for backward: backward holds the saved tensors and
# the gradients flowing through the unit, which are about as large again.
STEP_FACTOR = 2


def _saved_bytes(module: nn.Module, x: Tensor) -> int:
    """Bytes of the tensors the forward of ``module`` on ``x`` keeps for backward, each storage
    counted once, plus the output and the loss's difference (held until backward)."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    return sum(storages.values()) + 2 * out.element_size() * out.numel()


def estimate_step_bytes(module: nn.Module, inputs: Tensor, batch_size: int) -> int:
    """Peak bytes of one training step of the unit ``module`` at ``batch_size`` samples: what
    its forward saves for backward, measured on one and on two of ``inputs`` (the unit's cached
    inputs) so that tensors saved once per step (the weights' rounding) count once, times
    STEP_FACTOR for the gradients."""
    one = _saved_bytes(module, inputs[:1])
    if len(inputs) < 2:
        return STEP_FACTOR * one * batch_size
    per_sample = max(0, _saved_bytes(module, inputs[:2]) - one)
    fixed = max(0, one - per_sample)
    return STEP_FACTOR * (fixed + per_sample * batch_size)


def check_unit_fits(
    unit: str, cache: int, step: int, available: int | None, resume_hint: str
) -> None:
    """Raise CacheMemoryError when the unit's cache and training step together exceed
    GUARD_FRACTION of ``available``."""
    needed = cache + step
    if available is None or needed <= GUARD_FRACTION * available:
        return
    mib = 2**20
    raise CacheMemoryError(
        f"unit '{unit}' needs about {needed / mib:.0f} MiB ({cache / mib:.0f} MiB to cache its "
        f"inputs and targets, {step / mib:.0f} MiB for a training step), but only "
        f"{available / mib:.0f} MiB of memory is available (at most {GUARD_FRACTION:.0%} is "
        "used): lower --recon.batch_size or --data.init_args.calib_size, or free memory. "
        f"{resume_hint}"
    )
