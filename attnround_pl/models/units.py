"""Split a quantized model into reconstruction units, in forward order.

Three rules, tried in this order (each unit records its ``rule``):

- ``"registry"``: a model holding a module of a registered block class (BasicBlock,
  Bottleneck, InvertedResidual, the RegNet and MnasNet blocks; ``register_block`` adds one)
  is walked in registration order: each such block is one unit, and each quantized layer
  outside every block is a unit of its own (rule ``"layer"``). Registration order is forward
  order for these architectures (tests check it against a traced forward pass).
- ``"graph"``: any other model is cut by its traced graph on the example input (see
  ``graph_units``): a residual ``x + f(x)`` or a concat of branches is one unit, a plain chain
  one unit per layer. Layers the forward never calls are in no unit (with a warning).
- ``"child"`` / ``"layer"``: where tracing or shape propagation fails (control flow on tensor
  values), one unit per child module holding quantized layers, walking down only where one
  child holds them all; a child that is not called exactly once with one tensor in and one
  tensor out gives one unit per quantized layer instead. Without an example input: one unit per
  quantized layer, in registration order. Both with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.models.mnasnet import _InvertedResidual as MnasNetBlock
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..quant import QuantLayer, quant_layers
from .graph_units import (
    GraphRegion,
    QuantLayersTrain,
    analyse,
    float_pass,
    graph_regions,
    quant_targets,
    region_name,
)

BLOCK_TYPES: dict[type[nn.Module], str] = {}
RULES = ("registry", "graph", "child", "layer")
# a link of a joined unit's chain that is no module: ``x.flatten(1)`` in the model's forward
FLATTEN = "<flatten(1)>"


def register_block(cls: type[nn.Module], kind: str | None = None) -> type[nn.Module]:
    """Make every module of class ``cls`` one reconstruction unit."""
    BLOCK_TYPES[cls] = kind or cls.__name__
    return cls


for _cls, _kind in (
    (BasicBlock, "BasicBlock"),
    (Bottleneck, "Bottleneck"),
    (InvertedResidual, "InvertedResidual"),
    (ResBottleneckBlock, "RegNetBlock"),
    (MnasNetBlock, "MnasNetBlock"),
):
    register_block(_cls, _kind)


@dataclass
class Unit:
    """A reconstruction unit: ``layers`` are the paths of its quantized layers.

    Module units (rules 'registry', 'child', 'layer') are the submodule at ``path``; graph
    units (rule 'graph') are a region of the traced graph (``region``) and have ``path`` ''.
    ``name`` (a module path, or 'first..last' layer for a region with no common module) is
    stable and readable; ``kind`` is the block class's kind, 'layer', 'region' or the child's
    class name. ``module(qmodel)`` is what to reconstruct."""

    path: str
    kind: str
    layers: list[str] = field(default_factory=list)
    name: str = ""
    rule: str = "registry"
    region: GraphRegion | None = field(default=None, repr=False, compare=False)
    chain: tuple[str, ...] = ()  # several blocks run one after the other (``chain_blocks``)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.path or "model"
        if self.rule not in RULES:
            raise ValueError(f"rule={self.rule!r}: one of {RULES}")

    @property
    def is_graph(self) -> bool:
        return self.region is not None

    @property
    def output_path(self) -> str:
        """The submodule whose output is this module unit's output (its last block for a
        chain; ``path`` otherwise)."""
        return self.chain[-1] if self.chain else self.path

    def submodules(self, qmodel: nn.Module) -> list[nn.Module]:
        """A module unit's submodules of ``qmodel``: its blocks (and, for units joined by
        ``join_end_layers``, the modules between them) for a chain, else the one."""
        return [nn.Flatten(1) if p == FLATTEN else qmodel.get_submodule(p) if p else qmodel
                for p in self.chain or (self.path,)]

    def module(self, qmodel: nn.Module) -> nn.Module:
        """The module computing this unit from its input, sharing ``qmodel``'s quantized
        layers: the submodule itself (registry and layer units), its blocks in a Sequential
        (a chain), the submodule wrapped so that its float modules stay in eval mode when it
        trains (child units), an fx GraphModule of the region (graph units)."""
        if self.region is not None:
            return self.region.module(qmodel)
        if self.kind == "joined":
            return JoinedModules(*self.submodules(qmodel))
        if self.chain:
            return nn.Sequential(*self.submodules(qmodel))
        module = qmodel.get_submodule(self.path) if self.path else qmodel
        return EvalFloatOps(module) if self.rule == "child" else module


class JoinedModules(QuantLayersTrain, nn.Sequential):
    """A unit joined from several (``join_end_layers``): its modules in turn; ``train()``
    switches only the quantized layers (a BatchNorm or Dropout between them stays in eval)."""


class EvalFloatOps(QuantLayersTrain, nn.Module):
    """Runs ``inner``; ``train()`` switches only its quantized layers (Dropout, an unfolded
    BatchNorm and Python-level ``self.training`` branches stay as in eval)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


# registry -----------------------------------------------------------------------------------
def _holds_block(model: nn.Module) -> bool:
    return any(
        type(m) in BLOCK_TYPES and any(isinstance(s, QuantLayer) for s in m.modules())
        for m in model.modules()
    )


def _walk(module: nn.Module, prefix: str, units: list[Unit]) -> None:
    for child_name, child in module.named_children():
        path = f"{prefix}.{child_name}" if prefix else child_name
        if type(child) in BLOCK_TYPES:
            layers = [f"{path}.{n}" for n, m in child.named_modules() if isinstance(m, QuantLayer)]
            if layers:
                units.append(Unit(path, BLOCK_TYPES[type(child)], layers, rule="registry"))
        elif isinstance(child, QuantLayer):
            units.append(Unit(path, "layer", [path], rule="layer"))
        else:
            _walk(child, path, units)


# graph --------------------------------------------------------------------------------------
def _graph_units(qmodel: nn.Module, example: Tensor) -> list[Unit]:
    trace = analyse(qmodel, example)
    units, names = [], set()
    for region in graph_regions(qmodel, trace):
        layers = quant_targets(trace, qmodel, region.nodes)
        name = base = region_name(trace, qmodel, region)
        k = 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.add(name)
        kind = "layer" if len(layers) == 1 else "region"
        units.append(Unit("", kind, layers, name=name, rule="graph", region=region))
    return units


# fallbacks ----------------------------------------------------------------------------------
def _probe(qmodel: nn.Module, modules: dict[str, nn.Module], example: Tensor) -> dict[str, list]:
    """Per module path: [first call index, calls, every call one tensor in and out]."""
    seen: dict[str, list] = {}
    counter = [0]

    def pre(path: str, args: tuple, kwargs: dict) -> None:
        ok = len(args) == 1 and not kwargs and isinstance(args[0], Tensor)
        if path not in seen:
            seen[path] = [counter[0], 0, True]
        counter[0] += 1
        seen[path][1] += 1
        seen[path][2] = seen[path][2] and ok

    def post(path: str, out: object) -> None:
        seen[path][2] = seen[path][2] and isinstance(out, Tensor)

    handles = []
    for path, m in modules.items():
        handles.append(m.register_forward_pre_hook(
            lambda mod, a, kw, p=path: pre(p, a, kw), with_kwargs=True))
        handles.append(m.register_forward_hook(lambda mod, a, out, p=path: post(p, out)))
    _hooked_float_pass(qmodel, example, handles)
    return seen


def _hooked_float_pass(qmodel: nn.Module, example: Tensor, handles: list) -> None:
    """One ``float_pass`` forward of ``example`` with hooks; ``handles`` removed after, also
    on error."""
    try:
        with float_pass(qmodel):
            qmodel(example.to(next(qmodel.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()


def _layer_unit(path: str) -> Unit:
    return Unit(path, "layer", [path], rule="layer")


def _fallback_units(qmodel: nn.Module, example: Tensor | None) -> list[Unit]:
    layers = quant_layers(qmodel)
    if example is None:
        return [_layer_unit(path) for path in layers]
    prefix, level = "", qmodel
    while True:
        holders = [
            (f"{prefix}.{n}" if prefix else n, c) for n, c in level.named_children()
            if isinstance(c, QuantLayer) or any(isinstance(s, QuantLayer) for s in c.modules())
        ]
        if len(holders) == 1 and not isinstance(holders[0][1], QuantLayer):
            prefix, level = holders[0]
            continue
        break
    probe = _probe(qmodel, {**dict(holders), **layers}, example)
    units: list[tuple[int, Unit]] = []
    for path, child in holders:
        if isinstance(child, QuantLayer):
            if path in probe:
                units.append((probe[path][0], _layer_unit(path)))
            continue
        inside = [n for n in layers if n.startswith(path + ".")]
        state = probe.get(path)
        if state is not None and state[1] == 1 and state[2]:
            ran = [n for n in inside if n in probe]
            units.append((state[0], Unit(path, type(child).__name__, ran, rule="child")))
        else:
            units.extend((probe[n][0], _layer_unit(n)) for n in inside if n in probe)
    return [u for _, u in sorted(units, key=lambda pair: pair[0]) if u.layers]


# chains -------------------------------------------------------------------------------------
def chain_blocks(units: list[Unit], qmodel: nn.Module, size: int, example: Tensor,
                 in_stage: bool = False) -> list[Unit]:
    """``units`` with each run of up to ``size`` consecutive block units (rule 'registry')
    joined into one unit (``recon.unit_blocks``), where each block's input is exactly the
    block before's output (the same tensor, unchanged, on one forward of ``example``). A
    chain's ``path`` is its first block's, its ``name`` 'first..last', its ``kind`` 'blocks'.
    Other units (layers, child modules, graph regions) stay as they are; ``size`` 1 changes
    nothing. ``in_stage`` (``recon.unit_blocks_in_stage``): a chain also ends where the next
    block has another parent module (a stage: ResNet's ``layer2``), so no chain crosses from
    one stage into the next."""
    if size < 1:
        raise ValueError(f"size={size}: at least 1 block a unit")
    if size == 1:
        return list(units)
    follows = _follows(qmodel, units, example)
    out: list[Unit] = []
    run: list[Unit] = []

    def close() -> None:
        if len(run) > 1:
            out.append(Unit(run[0].path, "blocks", [n for u in run for n in u.layers],
                            name=f"{run[0].name}..{run[-1].name}", rule="registry",
                            chain=tuple(u.path for u in run)))
        else:
            out.extend(run)
        run.clear()

    for index, unit in enumerate(units):
        if run and (len(run) == size or not follows[index - 1] or unit.rule != "registry"
                    or (in_stage and _parent(unit.path) != _parent(run[-1].path))):
            close()
        if unit.rule == "registry" and not unit.chain:
            run.append(unit)
        else:
            out.append(unit)
    close()
    return out


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _follows(qmodel: nn.Module, units: list[Unit], example: Tensor) -> list[bool]:
    """For each unit but the last: whether the next unit's input is exactly its output (the
    same tensor, its values unchanged: no in-place op between) on one forward of ``example``;
    only module units are compared."""
    outputs: dict[int, tuple[Tensor, Tensor]] = {}
    follows = [False] * max(len(units) - 1, 0)
    handles = []
    for index, unit in enumerate(units):
        if unit.region is not None:
            continue
        module = qmodel.get_submodule(unit.output_path) if unit.output_path else qmodel

        def produce(m: nn.Module, args: tuple, out: object, index: int = index) -> None:
            if isinstance(out, Tensor):
                outputs[index] = (out, out.clone())

        def consume(m: nn.Module, args: tuple, index: int = index) -> None:
            before = outputs.get(index - 1)
            if index > 0 and before is not None and args and args[0] is before[0]:
                follows[index - 1] = torch.equal(args[0], before[1])

        handles.append(module.register_forward_hook(produce))
        first = qmodel.get_submodule(unit.path) if unit.path else qmodel
        handles.append(first.register_forward_pre_hook(consume, prepend=True))
    _hooked_float_pass(qmodel, example, handles)
    return follows


# joined ends -------------------------------------------------------------------------------
def join_end_layers(units: list[Unit], qmodel: nn.Module, example: Tensor) -> list[Unit]:
    """``units`` with the layer units before the first larger unit (a model's stem) joined to
    it, and those after the last one (the head) joined to that (``recon.join_end_layers``):
    one unit each, its error measured at the joined unit's output (the head's: the network's
    output). A "larger unit" is any unit that is not a single layer (a block, a chain, a
    region of several layers); a model without one is returned as it is.

    Module units join where the modules the forward calls between them (an unfolded
    BatchNorm, a ReLU, a pooling) each read the one before's output, and the next unit reads
    the last one's, the same tensor or it flattened per sample (``x.flatten(1)``); the joined
    unit (``kind`` 'joined', rule of the larger unit) runs them all in turn. Graph units are
    contiguous regions of the traced graph and always join. A pair that cannot join (another
    operation between them) stays apart, with a warning."""
    large = [i for i, u in enumerate(units) if u.kind != "layer"]
    if not large:
        return list(units)
    first, last = large[0], large[-1]
    groups = ([(0, len(units) - 1)] if first == last else
              [(0, first), *[(i, i) for i in range(first + 1, last)], (last, len(units) - 1)])
    events = (None if all(u.region is not None for u in units) else
              _call_events(qmodel, units, example))
    out: list[Unit] = []
    for start, stop in groups:
        joined = [units[start]]
        for unit in units[start + 1 : stop + 1]:
            pair = _join_pair(joined[-1], unit, qmodel, events)
            if pair is None:
                warnings.warn(f"recon.join_end_layers: {unit.name} cannot join "
                              f"{joined[-1].name} (an operation other than modules and "
                              "flatten runs between them): kept apart", stacklevel=2)
                joined.append(unit)
            else:
                joined[-1] = pair
        out.extend(joined)
    return out


def _join_pair(a: Unit, b: Unit, qmodel: nn.Module, events: list | None) -> Unit | None:
    """Unit ``a`` followed by unit ``b`` as one unit; None where they cannot join."""
    rule = b.rule if a.kind == "layer" else a.rule
    name = f"{a.name.split('..')[0]}..{b.name.split('..')[-1]}"
    layers = [*a.layers, *b.layers]
    if a.region is not None and b.region is not None:
        region = GraphRegion(a.region.trace, a.region.input, [*a.region.nodes, *b.region.nodes],
                             b.region.outputs)
        return Unit("", "joined", layers, name=name, rule="graph", region=region)
    if a.region is not None or b.region is not None or events is None:
        return None
    between = _links(a, b, events)
    if between is None:
        return None
    chain = (*(a.chain or (a.path,)), *between, *(b.chain or (b.path,)))
    return Unit(chain[0], "joined", layers, name=name, rule=rule, chain=chain)


def _call_events(qmodel: nn.Module, units: list[Unit], example: Tensor
                 ) -> list[tuple[str, str, object]]:
    """Every call of a module outside the module ``units`` (their own modules included) in one
    float forward of ``example``, in order: ('enter', path, the first argument) and ('exit',
    path, the output); tensors as they were then (cloned). What runs inside a unit never lies
    between two units, so its calls are not recorded (nor their tensors copied)."""
    inside = tuple(f"{p}." for u in units if u.region is None
                   for p in u.chain or (u.path,) if p)
    events: list[tuple[str, str, object]] = []

    def held(value: object) -> object:
        return (value, value.clone()) if isinstance(value, Tensor) else (value, None)

    handles = []
    for path, module in qmodel.named_modules():
        if not path or path.startswith(inside):
            continue
        # first of the pre-hooks: a block's input quantizer (quant.placement) runs inside it
        handles.append(module.register_forward_pre_hook(
            lambda m, args, path=path: events.append(("enter", path, held(args[0] if args
                                                                             else None))),
            prepend=True))
        handles.append(module.register_forward_hook(
            lambda m, args, out, path=path: events.append(("exit", path, held(out)))))
    _hooked_float_pass(qmodel, example, handles)
    return events


def _links(a: Unit, b: Unit, events: list) -> tuple[str, ...] | None:
    """The module paths (and ``FLATTEN``) that carry unit ``a``'s output to unit ``b``'s input
    on the recorded forward; None where something else does (an operation outside modules,
    an in-place change, a call reading another tensor)."""
    exits = [i for i, (kind, path, _) in enumerate(events)
             if kind == "exit" and path == a.output_path]
    enters = [i for i, (kind, path, _) in enumerate(events) if kind == "enter" and path == b.path]
    if len(exits) != 1 or len(enters) != 1 or exits[0] > enters[0]:
        return None  # called more than once, or not in this order
    value, values = events[exits[0]][2]  # the tensor so far and its values when made
    links: list[str] = []
    open_calls: list[str] = []
    for kind, path, (tensor, copy) in events[exits[0] + 1 : enters[0]]:
        if kind == "enter":
            if not open_calls:  # a call between the units, not one nested in another
                if tensor is not value or not torch.equal(copy, values):
                    return None  # it reads something else than the value so far
            open_calls.append(path)
        elif open_calls:
            open_calls.pop()
            if not open_calls:  # a link once it has returned (b's containers never do here)
                links.append(path)
                value, values = tensor, copy
        elif not a.output_path.startswith(path + "."):
            return None  # the end of a call that began before a's output and does not hold a
    if any(not b.path.startswith(path + ".") for path in open_calls):
        return None  # a call that began between the units and holds b: b is not next
    tensor, copy = events[enters[0]][2]
    if not isinstance(tensor, Tensor) or not isinstance(value, Tensor):
        return None
    if tensor is value and torch.equal(copy, values):
        return tuple(links)
    if copy.dim() == 2 and values.dim() > 2 and torch.equal(copy, values.flatten(1)):
        return (*links, FLATTEN)
    return None


# --------------------------------------------------------------------------------------------
def split_units(qmodel: nn.Module, example: Tensor | None = None) -> list[Unit]:
    """Units of a quantized model (see ``quant.quantize_model``) in forward order.

    ``example``: one calibration batch (two samples are enough), used for the graph rule's
    shape propagation and the fallbacks' probe; models with registered blocks do not need it.
    """
    quantized = quant_layers(qmodel)
    if not quantized:
        raise ValueError(f"{type(qmodel).__name__} has no quantized layers: quantize it first")
    model_name = type(qmodel).__name__
    if _holds_block(qmodel):
        units: list[Unit] = []
        _walk(qmodel, "", units)
        return units
    if example is None:
        warnings.warn(
            f"no example input to split {model_name} by its graph: one reconstruction unit per "
            "Conv/Linear layer, in registration order (pass split_units(qmodel, example=batch))",
            stacklevel=2,
        )
        return _fallback_units(qmodel, None)
    try:
        units = _graph_units(qmodel, example)
    except Exception as exc:  # any failure of trace or propagation: fall back
        units = _fallback_units(qmodel, example)
        rules = sorted({u.rule for u in units}, key=RULES.index)
        warnings.warn(
            f"cannot split {model_name} by its traced graph ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): one reconstruction unit per "
            f"{' / '.join('child module' if r == 'child' else 'Conv/Linear layer' for r in rules)}"
            " holding quantized layers",
            stacklevel=2,
        )
    covered = {layer for u in units for layer in u.layers}
    idle = [name for name in quantized if name not in covered]
    if idle:
        warnings.warn(
            f"quantized layers the forward pass of {model_name} never calls are in no "
            f"reconstruction unit: {idle}",
            stacklevel=2,
        )
    if not units:
        raise ValueError(f"the forward pass of {model_name} calls none of its quantized layers")
    return units
