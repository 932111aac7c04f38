"""Reconstruction units from a model's traced graph: regions between single-tensor cut points.

The quantized model is traced with ``torch.fx`` (quantized layers and ``torch.nn`` modules kept
whole, ``quant.order.LeafTracer``). Walking the nodes in order, a *cut point* is a position
after which exactly one value still needed by later nodes is live, and that value is a tensor.
A *region* is the run of nodes between two consecutive cut points; a region holding quantized
layers is one unit, computing the region's output from its input. So a residual ``x + f(x)``
or a concat of two branches (where two values are live in between) is one unit, and a plain
chain is one unit per layer. Regions without quantized layers are merged into the next unit;
after the last unit they stay outside every unit. A quantized layer called in several regions
(shared weights) merges those regions and all between them into one unit.

What counts as live, decided by shape propagation: the graph runs on the example input at two
batch sizes (``fx.Interpreter``, no gradients) and every node's value is classified:

- a tensor: live from its node to its last use (a cut needs exactly one);
- a value that does not depend on the model's input (``get_attr`` parameters, constants made
  from them): never live; a region that uses one recomputes it;
- a non-tensor value made from the input that is equal at both batch sizes and made of plain
  Python values (``size = x.shape[-2:]`` read early for a late ``F.interpolate``): never live;
  a region that uses it gets the value baked in as a constant (units are built for the
  calibration input size);
- any other value (``x.size(0)`` for a ``view``, a tuple holding tensors before its
  ``getitem``): live, so it blocks a cut until its last use.

A use that only feeds baked constants does not count: ``input.shape[-2:]`` read at the end
of a segmentation model's forward does not keep the input tensor live through the network.

A region ending at the model's output with several output tensors (an aux head in eval mode)
outputs them flattened and concatenated along dimension 1: one tensor for the MSE.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..quant import QuantLayer
from ..quant.order import trace_graph

_BAKEABLE = (int, float, bool, str, type(None), torch.dtype, torch.device, slice, type(...))
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand,
                      operator.ior, operator.ixor, operator.ilshift, operator.irshift}


class GraphUnitError(RuntimeError):
    """The model's graph cannot be cut into units (the caller falls back to module units)."""


class GraphMismatchError(ValueError):
    """The float model's traced graph does not match the quantized model's."""


@contextmanager
def float_pass(model: nn.Module) -> Iterator[None]:
    """Within: ``model`` in eval mode, no gradients, its quantized layers' weight and input
    quantization off (shapes do not depend on it, and the activation steps may not be set yet);
    everything restored after."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    saved = [(q, q.weight_enabled, q.input_quantizer.enabled) for q in layers]
    was_training = model.training
    model.eval()
    try:
        for q in layers:
            q.weight_enabled = q.input_quantizer.enabled = False
        with torch.no_grad():
            yield
    finally:
        for q, weights, activations in saved:
            q.weight_enabled, q.input_quantizer.enabled = weights, activations
        model.train(was_training)


def _bakeable(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_bakeable(v) for v in value)
    return isinstance(value, _BAKEABLE)


def _plain(value: Any) -> Any:
    """``value`` as an fx argument: torch.Size (and other tuples) as tuples, lists as lists."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # values that do not compare are not constants
        return False


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps, per node, whether its value is a tensor and (for plain
    non-tensor values) the value itself."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.tensors: set[str] = set()
        self.plain: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if isinstance(value, Tensor):
            self.tensors.add(n.name)
        elif _bakeable(value):
            self.plain[n.name] = value
        return value


@dataclass(eq=False)
class GraphTrace:
    """A quantized model's traced graph and what shape propagation learnt about its nodes."""

    graph: fx.Graph
    tensors: set[str]
    constants: dict[str, Any]
    independent: set[str]
    needed: set[str]
    nodes: dict[str, fx.Node] = field(init=False, repr=False)
    _float_graphs: weakref.WeakKeyDictionary = field(
        init=False, repr=False, default_factory=weakref.WeakKeyDictionary
    )

    def __post_init__(self) -> None:
        self.nodes = {n.name: n for n in self.graph.nodes}

    def float_graph(self, float_model: nn.Module) -> fx.Graph:
        """The float model's traced graph (cached per model)."""
        graph = self._float_graphs.get(float_model)
        if graph is None:
            graph = trace_graph(float_model)
            self._float_graphs[float_model] = graph
        return graph


@dataclass(eq=False)
class GraphRegion:
    """The nodes of one graph unit: ``input`` feeds them, ``outputs`` are what they return."""

    trace: GraphTrace
    input: str
    nodes: list[str]
    outputs: list[str]

    def module(self, root: nn.Module) -> RegionModule:
        """An fx GraphModule computing the region from its input, sharing ``root``'s modules."""
        return RegionModule(root, self._graph(root))

    def _graph(self, root: nn.Module) -> fx.Graph:
        trace, graph = self.trace, fx.Graph()
        env: dict[str, Any] = {}
        x = graph.placeholder(self.input)
        env[self.input] = x
        if any(in_place(trace.nodes[name], root) for name in self.nodes):
            env[self.input] = graph.call_method("clone", (x,))  # the cache is not written to

        def arg(n: fx.Node) -> Any:
            if n.name in env:
                return env[n.name]
            if n.name in trace.independent:  # recomputed here (a parameter, a constant tensor)
                env[n.name] = graph.node_copy(n, arg)
                return env[n.name]
            if n.name in trace.constants:
                return _plain(trace.constants[n.name])
            raise GraphUnitError(f"node {n.name!r} is used by the region {self.outputs} but "
                                 "is neither its input nor a constant")

        skip = trace.independent | set(trace.constants)  # copied or baked where used
        for name in self.nodes:
            if name in trace.needed and name not in skip:
                env[name] = graph.node_copy(trace.nodes[name], arg)
        graph.output(_joined(graph, [env[o] for o in self.outputs]))
        return graph


def joined_outputs(values: Sequence[Tensor]) -> Tensor:
    """A region's several outputs as its targets hold them: each flattened per sample, then
    concatenated (one output stays as it is). Called by the region and prefix graphs, and on
    the gradients of those outputs (``calib.fisher``)."""
    if len(values) == 1:
        return values[0]
    return torch.cat([v.flatten(1) for v in values], 1)


def _joined(graph: fx.Graph, values: list[fx.Node]) -> fx.Node:
    return values[0] if len(values) == 1 else graph.call_function(joined_outputs, (values,))


def in_place(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` writes into its input (an ``inplace`` module or argument, a ``relu_``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(root.get_submodule(node.target), "inplace", False) is True
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _INPLACE_FUNCTIONS or (name.endswith("_") and
                                                      not name.endswith("__"))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    return False


class QuantLayersTrain:
    """Mixin for a unit's module: ``train()`` switches only the quantized layers; every other
    module (an unfolded BatchNorm, a Dropout) stays in eval mode, as in the quantized model."""

    def train(self, mode: bool = True) -> nn.Module:
        super().train(mode)
        if mode:
            keep_float_ops_eval(self)
        return self


class RegionModule(QuantLayersTrain, fx.GraphModule):
    """A graph unit's module: the region of the traced graph, sharing the model's layers."""


def keep_float_ops_eval(module: nn.Module) -> None:
    """Put every submodule of ``module`` that is not (inside) a quantized layer in eval mode."""
    for child in module.children():
        if not isinstance(child, QuantLayer):
            child.training = False
            keep_float_ops_eval(child)


def prefix_module(graph: fx.Graph, root: nn.Module, outputs: list[str]) -> fx.GraphModule:
    """A GraphModule running only the nodes of ``graph`` that ``outputs`` need (the prefix of
    the network up to them) and returning their value (joined as a region's outputs are)."""
    by_name = {n.name: n for n in graph.nodes}
    needed: set[str] = set()
    stack = [by_name[o] for o in outputs]
    while stack:
        n = stack.pop()
        if n.name not in needed:
            needed.add(n.name)
            stack.extend(n.all_input_nodes)
    prefix, env = fx.Graph(), {}
    for n in graph.nodes:
        if n.name in needed:
            env[n.name] = prefix.node_copy(n, lambda a: env[a.name])
    prefix.output(_joined(prefix, [env[o] for o in outputs]))
    return fx.GraphModule(root, prefix)


def check_same_graph(
    qgraph: fx.Graph, qmodel: nn.Module, fgraph: fx.Graph, float_model: nn.Module,
    outputs: list[str],
) -> None:
    """Raise GraphMismatchError unless every node that ``outputs`` need in the quantized
    model's graph is in the float model's graph under the same name, op and target, calling a
    module of the same class (a quantized layer: its float layer's class)."""
    fnodes = {n.name: n for n in fgraph.nodes}
    qnodes = {n.name: n for n in qgraph.nodes}
    stack, seen = list(outputs), set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        q, f = qnodes[name], fnodes.get(name)
        same = f is not None and f.op == q.op and f.target == q.target
        if same and q.op == "call_module":
            qm, fm = qmodel.get_submodule(q.target), float_model.get_submodule(f.target)
            same = type(qm.layer if isinstance(qm, QuantLayer) else qm) is type(fm)
        if not same:
            got = "no such node" if f is None else f"{f.op} {f.target}"
            if f is not None and f.op == "call_module":
                got += f" ({type(float_model.get_submodule(f.target)).__name__})"
            want = f"{q.op} {q.target}"
            if q.op == "call_module":
                want += f" ({type(qmodel.get_submodule(q.target)).__name__})"
            raise GraphMismatchError(
                f"the float model's graph does not match the quantized model's at node "
                f"{name!r} ({want} in the quantized model, {got} in the float model): pass "
                "the BN-folded float model the quantized one was made from"
            )
        stack.extend(a.name for a in q.all_input_nodes)


# ---------------------------------------------------------------------------------------------
def analyse(qmodel: nn.Module, example: Tensor) -> GraphTrace:
    """Trace ``qmodel`` and propagate ``example`` (and it twice over, concatenated) through the
    graph. Raises what fx raises when tracing fails, GraphUnitError for a forward with other
    than one input."""
    graph = trace_graph(qmodel)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphUnitError(f"forward takes {len(placeholders)} inputs, not one tensor")
    gm = fx.GraphModule(qmodel, graph)
    first = next(qmodel.parameters()).device
    small = example.to(first)
    runs = []
    with float_pass(qmodel):
        for x in (small, torch.cat([small, small])):
            recorder = _Recorder(gm)
            recorder.run(x)
            runs.append(recorder)
    independent: set[str] = set()
    for n in graph.nodes:
        if n.op != "placeholder" and all(a.name in independent for a in n.all_input_nodes):
            independent.add(n.name)
    a, b = runs
    constants = {
        name: value for name, value in a.plain.items()
        if name not in independent and name in b.plain and _same(value, b.plain[name])
    }
    needed: set[str] = set()
    for n in reversed(graph.nodes):
        real = [u for u in n.users if u.name in needed and u.name not in constants]
        if n.op == "output" or real or n.is_impure() or in_place(n, qmodel):
            needed.add(n.name)
    return GraphTrace(graph, a.tensors & b.tensors, constants, independent, needed)


def _cuts(trace: GraphTrace) -> Iterator[tuple[int, str]]:
    """(position, live value) of every cut point, in order."""
    order = list(trace.graph.nodes)
    index = {n.name: i for i, n in enumerate(order)}
    skip = trace.independent | set(trace.constants)
    last_use = {  # uses that need the value at run time (not those baked as constants)
        n.name: max((index[u.name] for u in n.users
                     if u.name in trace.needed and u.name not in trace.constants), default=-1)
        for n in order
    }
    live: set[str] = set()
    for i, n in enumerate(order):
        if n.op == "output":
            return
        if n.name not in skip and last_use[n.name] > i:
            live.add(n.name)
        live = {v for v in live if last_use[v] > i}
        if len(live) == 1:
            (value,) = live
            if value in trace.tensors:
                yield i, value


def _output_tensors(trace: GraphTrace) -> list[str]:
    out = next(n for n in trace.graph.nodes if n.op == "output")
    names: list[str] = []
    fx.node.map_arg(out.args, lambda a: names.append(a.name) or a)
    return [n for n in dict.fromkeys(names) if n in trace.tensors and n not in trace.independent]


def quant_targets(trace: GraphTrace, root: nn.Module, names: list[str]) -> list[str]:
    """Module paths of the quantized layers that the nodes ``names`` call, first call first."""
    found: list[str] = []
    for name in names:
        n = trace.nodes[name]
        if n.op == "call_module" and isinstance(root.get_submodule(n.target), QuantLayer):
            if n.target not in found:
                found.append(n.target)
    return found


def graph_regions(qmodel: nn.Module, trace: GraphTrace) -> list[GraphRegion]:
    """The graph units' regions of ``qmodel``, in forward order (see the module docstring)."""
    order = [n for n in trace.graph.nodes if n.op != "output"]
    cuts = list(_cuts(trace))
    if not cuts or cuts[0][0] != 0:
        raise GraphUnitError("the model's input is not a single tensor")
    spans: list[tuple[str, list[str], list[str]]] = []  # (input, nodes, outputs)
    for (start, value_in), (stop, value_out) in zip(cuts, cuts[1:], strict=False):
        spans.append((value_in, [n.name for n in order[start + 1 : stop + 1]], [value_out]))
    last, value_in = cuts[-1]
    tail = [n.name for n in order[last + 1 :]]
    if tail:
        spans.append((value_in, tail, _output_tensors(trace)))
    # merge: regions without quantized layers into the next; regions sharing a layer
    layers = [quant_targets(trace, qmodel, nodes) for _, nodes, _ in spans]
    first: dict[str, int] = {}
    reach = list(range(len(spans)))  # the last span a span must be merged with
    for i, names in enumerate(layers):
        for layer in names:
            if layer in first:
                reach[first[layer]] = max(reach[first[layer]], i)
            else:
                first[layer] = i
    regions: list[GraphRegion] = []
    i = 0
    while i < len(spans):
        start, stop = i, reach[i]
        j = i
        while j <= stop:
            stop = max(stop, reach[j])
            j += 1
        if any(layers[k] for k in range(start, stop + 1)):
            nodes = [name for k in range(start, stop + 1) for name in spans[k][1]]
            region = GraphRegion(trace, spans[start][0], nodes, spans[stop][2])
            if not region.outputs:
                raise GraphUnitError("the model's output holds no tensor")
            regions.append(region)
            i = stop + 1
        elif stop + 1 < len(spans):  # no quantized layer: merged into the next region
            nxt = spans[stop + 1]
            merged = [name for k in range(start, stop + 1) for name in spans[k][1]]
            spans[stop + 1] = (spans[start][0], merged + nxt[1], nxt[2])
            i = stop + 1
        else:  # after the last unit: outside every unit
            i = stop + 1
    return regions


def region_name(trace: GraphTrace, root: nn.Module, region: GraphRegion) -> str:
    """A readable name: the one quantized layer's path; else the deepest module holding every
    node from the first quantized layer on; else 'first..last' quantized layer."""
    layers = quant_targets(trace, root, region.nodes)
    if len(layers) == 1:
        return layers[0]
    calls = [trace.nodes[name] for name in region.nodes]
    start = next(i for i, n in enumerate(calls) if n.op == "call_module" and n.target in layers)
    paths = [_module_path(trace.nodes[name]) for name in region.nodes[start:]]
    parts = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return ".".join(common) or f"{layers[0]}..{layers[-1]}"


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return path[0] if isinstance(path, tuple) else str(list(stack.keys())[-1])
