"""Activation cache: a unit's inputs (from the quantized model) and float targets.

Inputs come from the already-quantized model (earlier units frozen), targets from the float
model with BatchNorm folded; both are captured with hooks that stop the forward pass as soon
as the unit is reached, so only the prefix of the network runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class _Reached(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside a hook to stop a forward pass once the tensor of interest is captured."""


@dataclass
class UnitData:
    """Cached inputs and float targets of one unit, first dimension = calibration samples."""

    inputs: Tensor
    targets: Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.inputs, self.targets))

    def __len__(self) -> int:
        return self.inputs.shape[0]


@torch.no_grad()
def capture(
    model: nn.Module, path: str, batches: Iterable[Tensor], kind: str, device: str = "cpu"
) -> Tensor:
    """Concatenate the ``kind`` ('input' or 'output') of submodule ``path`` over ``batches``."""
    module = model.get_submodule(path) if path else model
    store: list[Tensor] = []
    first = next(model.parameters()).device

    def grab(value: Tensor) -> None:
        store.append(value.detach().to(device))
        raise _Reached

    if kind == "input":
        handle = module.register_forward_pre_hook(lambda m, args: grab(args[0]))
    elif kind == "output":
        handle = module.register_forward_hook(lambda m, args, out: grab(out))
    else:
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            try:
                model(batch.to(first))
            except _Reached:
                pass
    finally:
        handle.remove()
        model.train(was_training)
    if not store:
        raise RuntimeError(f"unit {path!r} was never reached by the forward pass")
    return torch.cat(store)


def build_unit_data(
    qmodel: nn.Module, float_model: nn.Module, path: str, batches: list[Tensor],
    device: str = "cpu",
) -> UnitData:  # fmt: skip
    """The unit's inputs from ``qmodel`` and its targets from ``float_model``."""
    return UnitData(
        capture(qmodel, path, batches, "input", device),
        capture(float_model, path, batches, "output", device),
    )


def cache_device(nbytes: int, accelerator_device: torch.device, fraction: float = 0.5) -> str:
    """'cpu', or the accelerator when the cache takes at most ``fraction`` of its free memory."""
    if accelerator_device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(accelerator_device)
        if nbytes <= fraction * free:
            return str(accelerator_device)
    return "cpu"
