"""PD-Quant's term on the network's output (``recon.output_weight``): a unit's quantized output
run through the float network after the unit, its class probabilities compared with the float
network's.

PD-Quant (Liu et al., CVPR 2023, "prediction difference") adds to a block's reconstruction
error the KL divergence from the float network's softmax output to the softmax output of the
network whose block is quantized and whose later layers are float. Their ``block_recon.py``:
``KLDivLoss(reduction='batchmean')(log_softmax(out / T), softmax(out_fp / T)) / lamb_r``, with
``T`` 4 and ``lamb_r`` 0.1 in their ``main_imagenet.py``, so a weight of 10 on the divergence.
Here, for each unit:

- the tail (``tail_graphs``): the float (BN-folded) model's traced graph from the unit's output
  to the network's output. The unit's output must be the only way from the images to the
  network's output after the unit (a chain of blocks, as their code assumes); a unit with a
  connection around it, or with several outputs, is refused with one line;
- the float logits: the float model's output on the calibration images (``cache.capture`` of
  the whole model), computed once per pass over the units and gathered with each step's
  samples;
- the term (``OutputTerm``): ``weight * prediction_difference(tail(unit output), float logits,
  temperature)``, added to the step's output error (``calib.step.step_losses``).

Where this differs from PD-Quant's code: their error term takes the output of the dropped
input (QDrop's mixing) and the divergence that of the undropped one; here both take the unit's
one output (the same where ``quant.drop.prob`` is 0, our recipes' default). Their
distribution correction of the float model's inputs (``lamb_c``, ``bn_lr``) is not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx
from torch import Tensor, nn

from ..errors import SettingError
from ..models import Unit
from ..models.graph_units import in_place
from ..models.units import FLATTEN
from ..quant import LeafTracer, prediction_difference

OPTION = "recon.output_weight"


class _UnitLeaves(LeafTracer):
    """Traces with the module units' blocks whole, so a unit's output is one node."""

    def __init__(self, paths: set[str]) -> None:
        super().__init__()
        self.paths = paths

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.paths or super().is_leaf_module(
            m, module_qualified_name)


def _float_graph(float_model: nn.Module, units: Sequence[Unit]) -> fx.Graph:
    """The float model's traced graph: the graph units' own, or a trace with every module
    unit's blocks as leaves."""
    for unit in units:
        if unit.region is not None:
            return unit.region.trace.float_graph(float_model)
    paths = {p for u in units for p in (u.chain or (u.path,)) if p and p != FLATTEN}
    try:
        return _UnitLeaves(paths).trace(float_model)
    except Exception as exc:  # fx raises several kinds; the user needs the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SettingError(f"{OPTION} runs the float network after each unit, but torch.fx "
                           f"cannot trace {type(float_model).__name__}: {first}; set "
                           f"{OPTION} to 0") from None


def _cut(graph: fx.Graph, unit: Unit) -> fx.Node:
    """The node of ``graph`` whose value is ``unit``'s output."""
    if unit.region is not None:
        if len(unit.region.outputs) != 1:
            raise SettingError(f"{OPTION} runs the float network after unit {unit.name!r} on "
                               f"its output, but it has {len(unit.region.outputs)} outputs "
                               f"({', '.join(unit.region.outputs)}); set {OPTION} to 0")
        found = [n for n in graph.nodes if n.name == unit.region.outputs[0]]
        if not found:
            raise SettingError(f"{OPTION}: the float model's traced graph has no node "
                               f"{unit.region.outputs[0]!r}, unit {unit.name!r}'s output; pass "
                               f"the float model the quantized one was made from, or set "
                               f"{OPTION} to 0")
        return found[0]
    found = [n for n in graph.nodes if n.op == "call_module" and n.target == unit.output_path]
    if len(found) != 1:
        raise SettingError(f"{OPTION} runs the float network after unit {unit.name!r}, but "
                           f"the traced forward calls {unit.output_path!r} {len(found)} times; "
                           f"set {OPTION} to 0")
    return found[0]


def _tail_graph(graph: fx.Graph, cut: fx.Node, unit: Unit, root: nn.Module) -> fx.Graph:
    """A graph from the value of ``cut`` (its one placeholder) to ``graph``'s output, running
    only the nodes the output needs after the cut."""
    output = next(n for n in graph.nodes if n.op == "output")
    needed: set[fx.Node] = set()
    stack, reached = list(output.all_input_nodes), False
    while stack:
        node = stack.pop()
        if node is cut:
            reached = True
        elif node not in needed:
            if node.op == "placeholder":
                raise SettingError(
                    f"{OPTION} runs the float network after unit {unit.name!r} on the unit's "
                    "output alone, but the network's output also reads values from before the "
                    "unit (a connection around it); set it to 0, or use units that end where "
                    "the network has one path")
            needed.add(node)
            stack.extend(node.all_input_nodes)
    if not reached:
        raise SettingError(f"{OPTION}: the network's output does not depend on unit "
                           f"{unit.name!r}'s output; set it to 0")
    tail = fx.Graph()
    start = tail.placeholder("unit_output")
    if any(in_place(n, root) for n in needed):  # one may write to the unit's output (through
        start = tail.call_method("clone", (start,))  # an Identity): its error reads it too
    env = {cut: start}
    for node in graph.nodes:
        if node in needed:
            env[node] = tail.node_copy(node, lambda a: env[a])
    tail.node_copy(output, lambda a: env[a])
    return tail


def tail_graphs(float_model: nn.Module, units: Sequence[Unit]) -> list[fx.Graph]:
    """Per unit, the float network after it as a graph (``tail_module`` makes it a module);
    raises SettingError (one line) where a unit's output is not the way to the network's."""
    graph = _float_graph(float_model, units)
    return [_tail_graph(graph, _cut(graph, unit), unit, float_model) for unit in units]


def tail_module(float_model: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """``graph`` (of ``tail_graphs``) as an eval-mode module sharing ``float_model``'s layers
    on their device now; its parameters learn nothing (no gradient kept for them)."""
    tail = fx.GraphModule(float_model, graph).eval()
    for p in tail.parameters():
        p.requires_grad_(False)
    return tail


@dataclass
class OutputTerm:
    """``weight * prediction_difference(tail(unit output), float logits, temperature)``."""

    tail: nn.Module
    weight: float
    temperature: float = 4.0

    def __call__(self, unit_output: Tensor, logits: Tensor) -> Tensor:
        return self.weight * prediction_difference(self.tail(unit_output), logits,
                                                   self.temperature)
