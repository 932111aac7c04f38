"""Multi-process calibration (DDP): launching, sharding the calibration set, reductions.

With ``--trainer.devices N --trainer.strategy ddp`` the whole calibration runs in N processes
(Lightning's launcher re-runs the command in N - 1 children, the process group is set up once,
every later Trainer joins it). Each rank holds the calibration samples ``i`` with
``i % N == rank`` for its unit caches; the reconstruction draws one global batch per step (the
same on every rank, and the same as a 1-process run draws) and each rank learns on its part of
it, weighted so that DDP's gradient average is the gradient of the global batch loss. Only
plain ``torch.distributed`` calls: gloo on CPU, NCCL on GPUs, the same code path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

_LAUNCH_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


class PeerRankError(RuntimeError):
    """Another rank failed; it reports the error, this rank only stops."""


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    return rank_world()[0] == 0


def wants_ddp(trainer_kwargs: dict[str, Any]) -> bool:
    """Whether the user's Trainer options ask for more than one process."""
    devices = trainer_kwargs.get("devices", 1)
    many = (isinstance(devices, int) and devices > 1) or (
        isinstance(devices, (list, tuple)) and len(devices) > 1
    ) or (isinstance(devices, str) and devices not in ("1", "auto") and devices != "0")
    return many or int(trainer_kwargs.get("num_nodes", 1) or 1) > 1


def launch(trainer_kwargs: dict[str, Any]) -> None:
    """Start the other ranks (Lightning's launcher) and join the process group, once.

    Must run before anything rank-dependent; the children re-run the same command and arrive
    here too, where they only join.
    """
    if not wants_ddp(trainer_kwargs) or rank_world()[1] > 1:
        return
    from lightning.fabric import Fabric

    options = {k: v for k, v in trainer_kwargs.items() if k in _LAUNCH_KEYS and v is not None}
    options.pop("precision", None)
    if "strategy" not in options or options["strategy"] == "auto":
        options["strategy"] = "ddp"
    Fabric(**options).launch()


def close_process_group() -> None:
    """Tear this process's group down (no-op outside one), before the interpreter exits.

    Left to interpreter shutdown, the gloo group's worker threads can be destroyed while still
    joinable, and the process aborts after its work is done ("terminate called without an
    active exception", exit status -6; seen once in a fresh-clone test run of a failing 2-rank
    calibration, not reproduced in 6 reruns). torch asks for an explicit
    ``destroy_process_group()`` before exit; this is it.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batches: list[Tensor], rank: int, world: int, batch_size: int = 256) -> list[Tensor]:
    """This rank's calibration samples (``i % world == rank``), re-batched."""
    if world == 1:
        return batches
    samples = torch.cat(batches)[rank::world]
    return list(samples.split(batch_size))


def agree(error: BaseException | None) -> None:
    """Collective: if any rank brings an error, every rank stops. The first failing rank's
    error is raised there; the others raise PeerRankError (they print nothing)."""
    rank, world = rank_world()
    if world == 1:
        if error is not None:
            raise error
        return
    messages: list[Any] = [None] * world
    dist.all_gather_object(messages, None if error is None else (type(error).__name__, str(error)))
    failing = [r for r, m in enumerate(messages) if m is not None]
    if not failing:
        return
    if error is not None and rank == failing[0]:
        raise error
    name, text = messages[failing[0]]
    raise PeerRankError(f"rank {failing[0]} failed: {name}: {text}")


def reduce_sums(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum over ranks (identity in one process)."""
    if rank_world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
