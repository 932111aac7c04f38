"""Activation cache: a unit's inputs (from the quantized model) and float targets.

Inputs come from the already-quantized model (earlier units frozen), targets from the float
model with BatchNorm folded. Only the prefix of the network up to the unit runs: a module
unit's are captured with hooks that stop the forward pass as soon as the unit is reached; a
graph unit's by running only the traced graph's nodes its input (or output) needs. The float
model's graph is matched to the quantized model's node by node (same names, ops, targets).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..models import Unit
from ..models.graph_units import check_same_graph, prefix_module


class _Reached(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside a hook to stop a forward pass once the tensor of interest is captured."""


@dataclass
class UnitData:
    """Cached inputs and float targets of one unit, first dimension = calibration samples;
    ``float_inputs``: the float model's inputs of the unit (QDrop's input mixing,
    ``DropSettings.float_inputs``), None when not asked for; ``fisher``: the targets' element
    weights (``recon.loss fisher``, see ``fisher``), None for the plain squared error;
    ``logits``: the float network's output on the samples (``recon.output_weight``, see
    ``output_term``), None without that term."""

    inputs: Tensor
    targets: Tensor
    float_inputs: Tensor | None = None
    fisher: Tensor | None = None
    logits: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held, each tensor once (``build_unit_data`` gives ``inputs`` and
        ``float_inputs`` one tensor where both come from the float model)."""
        held = {id(t): t for t in (self.inputs, self.targets, self.float_inputs, self.fisher,
                                   self.logits) if t is not None}
        return sum(t.element_size() * t.numel() for t in held.values())

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
        # first of the hooks: a block's own input quantizer (quant.placement) runs after it
        handle = module.register_forward_pre_hook(lambda m, args: grab(args[0]), prepend=True)
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


@torch.no_grad()
def capture_graph(
    model: nn.Module, graph: fx.Graph, outputs: list[str], batches: Iterable[Tensor],
    device: str = "cpu",
) -> Tensor:
    """Concatenate over ``batches`` the value of the nodes ``outputs`` of ``model``'s traced
    ``graph`` (several: flattened and joined), running only the nodes they need."""
    prefix = prefix_module(graph, model, outputs)
    first = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        store = [prefix(batch.to(first)).detach().to(device) for batch in batches]
    finally:
        model.train(was_training)
    if not store:
        raise RuntimeError(f"no batches to capture {outputs} from")
    return torch.cat(store)


def build_unit_data(
    qmodel: nn.Module, float_model: nn.Module, unit: Unit | str, batches: list[Tensor],
    device: str = "cpu", float_inputs: bool = False, inputs_from_float: bool = False,
) -> UnitData:
    """The unit's inputs from ``qmodel`` and its targets from ``float_model`` (and with
    ``float_inputs`` its inputs from ``float_model`` too; with ``inputs_from_float`` its
    inputs are ``float_model``'s, BRECQ's activation stage); ``unit`` is a Unit of
    ``split_units(qmodel)`` or the path of a submodule (a module unit). Raises
    ``GraphMismatchError`` where a graph unit's nodes are not in ``float_model``'s graph."""
    region = unit.region if isinstance(unit, Unit) else None
    wants_float = float_inputs or inputs_from_float  # captured once for either use
    if region is None:
        path = unit.path if isinstance(unit, Unit) else unit
        last = unit.output_path if isinstance(unit, Unit) else unit  # a chain's last block
        floats = capture(float_model, path, batches, "input", device) if wants_float else None
        inputs = floats if inputs_from_float else capture(qmodel, path, batches, "input", device)
        targets = capture(float_model, last, batches, "output", device)
    else:
        fgraph = region.trace.float_graph(float_model)
        check_same_graph(region.trace.graph, qmodel, fgraph, float_model, region.outputs)
        floats = (capture_graph(float_model, fgraph, [region.input], batches, device)
                  if wants_float else None)
        inputs = floats if inputs_from_float else capture_graph(
            qmodel, region.trace.graph, [region.input], batches, device)
        targets = capture_graph(float_model, fgraph, region.outputs, batches, device)
    return UnitData(inputs, targets, floats if float_inputs else None)


def cache_device(nbytes: int, accelerator_device: torch.device, fraction: float = 0.5) -> str:
    """'cpu', or the accelerator when the cache takes at most ``fraction`` of its free memory."""
    if accelerator_device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(accelerator_device)
        if nbytes <= fraction * free:
            return str(accelerator_device)
    return "cpu"
