"""What a model's forward pass calls, read from its ``torch.fx`` trace (plain PyTorch).

The trace keeps quantized layers (and every ``torch.nn`` module, fx's default) whole, so its
``call_module`` nodes name the Conv1d / Conv2d / Linear layers (or their quantized twins) in
the order the forward pass calls them. Python-level branches on module state (``if
self.training``, ``if self.aux_logits``) are followed as the model is when traced, so trace
a model in eval mode to see what inference runs.
"""

from __future__ import annotations

import operator
import warnings
from collections import Counter

import torch.fx as fx
from torch import nn

from .layers import QUANT_LAYER_TYPES, QuantLayer


class LeafTracer(fx.Tracer):
    """fx tracer that keeps quantized layers whole (``torch.nn`` modules are leaves already)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, QuantLayer) or super().is_leaf_module(m, module_qualified_name)


def trace_graph(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model``'s forward (quantized layers as leaves); raises what fx raises
    (e.g. ``TraceError`` for control flow on tensor values)."""
    return LeafTracer().trace(model)


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, QuantLayer) or type(module) in QUANT_LAYER_TYPES


def _called_layers(model: nn.Module, graph: fx.Graph) -> list[str]:
    order: list[str] = []
    for node in graph.nodes:
        if node.op == "call_module" and node.target not in order:
            if _is_layer(model.get_submodule(node.target)):
                order.append(node.target)
    return order


def execution_order(model: nn.Module) -> list[str]:
    """Names of the Conv1d / Conv2d / Linear layers (or quantized layers) of ``model`` in the
    order its traced forward first calls them; a layer the forward never calls (an eval-mode
    aux classifier) is not listed. Where the model cannot be traced: every such layer in
    registration order, with a warning."""
    try:
        graph = trace_graph(model)
    except Exception as exc:  # any trace failure means: no order known
        warnings.warn(
            f"cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); first and "
            "last layer taken in registration order",
            stacklevel=2,
        )
        return [n for n, m in model.named_modules() if _is_layer(m)]
    return _called_layers(model, graph)


def never_run_layers(model: nn.Module) -> list[str]:
    """Conv1d / Conv2d / Linear (or quantized) layers of ``model`` that its traced forward never
    calls, in registration order; [] where the model cannot be traced."""
    try:
        graph = trace_graph(model)
    except Exception:
        return []
    called = set(_called_layers(model, graph))
    return [n for n, m in model.named_modules() if _is_layer(m) and n not in called]


STRUCTURAL_FUNCTIONS = (getattr, operator.getitem)
STRUCTURAL_METHODS = ("size", "dim")
NO_OP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def float_ops(model: nn.Module) -> dict[str, int]:
    """Operations of ``model``'s traced forward that run in float: op type name -> count.

    Counted: ``call_module`` nodes that are not quantized layers (by module class name, e.g.
    ``ReLU``, ``BatchNorm2d``, ``Conv2d`` for a layer left float), ``call_function`` nodes (by
    function name, e.g. ``add``, ``cat``, ``interpolate``) and ``call_method`` nodes (by method
    name, e.g. ``view``, ``mean``). Not counted: placeholders, outputs, ``get_attr``, the
    structural ``getattr`` / ``getitem`` / ``size()`` / ``dim()``, and the modules that are
    no-ops at inference (``Identity``, where folding removed a BatchNorm, and ``Dropout``).
    Where the model cannot be traced, the leaf modules that are not quantized layers are counted
    (functions called in ``forward`` are then not seen)."""
    counts: Counter[str] = Counter()
    try:
        graph = trace_graph(model)
    except Exception:  # untraceable: count what the module tree shows
        inside = {id(m) for q in model.modules() if isinstance(q, QuantLayer) for m in q.modules()}
        for module in model.modules():
            leaf = next(module.children(), None) is None
            if leaf and id(module) not in inside and not isinstance(module, NO_OP_MODULES):
                counts[type(module).__name__] += 1
        return dict(sorted(counts.items()))
    for node in graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            if isinstance(module, (QuantLayer, *NO_OP_MODULES)):
                continue
            counts[type(module).__name__] += 1
        elif node.op == "call_function":
            if node.target in STRUCTURAL_FUNCTIONS:
                continue
            counts[getattr(node.target, "__name__", str(node.target))] += 1
        elif node.op == "call_method":
            if node.target in STRUCTURAL_METHODS:
                continue
            counts[str(node.target)] += 1
    return dict(sorted(counts.items()))
