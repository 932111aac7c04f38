"""Fold every BatchNorm1d/2d into the Conv1d/Conv2d that feeds it.

``y = gamma (conv(x) - mu) / sqrt(var + eps) + beta`` becomes a conv with weight
``W * gamma / sqrt(var + eps)`` (per output channel) and bias
``(b - mu) gamma / sqrt(var + eps) + beta``.
The folded BatchNorm is replaced by ``nn.Identity`` in place, so the module tree keeps its shape
(residual blocks stay blocks). Pairs are found by tracing with torch.fx; a model that cannot be
traced falls back to pairs adjacent inside ``nn.Sequential``.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx, nn

from .errors import QuantConfigError
from .tree import set_submodule


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv1d | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    """Fold ``bn`` (with running statistics) into ``conv`` in place."""
    if bn.running_mean is None or bn.running_var is None:
        raise QuantConfigError("cannot fold a BatchNorm without running statistics")
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
    new_bias = (bias - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))


_PAIRS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv1d, nn.BatchNorm1d))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return any(type(conv) is c and type(bn) is b for c, b in _PAIRS)


def _pairs_by_tracing(model: nn.Module) -> list[tuple[str, str]]:
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(
            modules[node.target], (nn.BatchNorm1d, nn.BatchNorm2d)
        ):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and _foldable(modules[src.target], modules[node.target])
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_in_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False):
            if _foldable(a, b):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def fold_batchnorms(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every Conv2d -> BatchNorm2d and Conv1d -> BatchNorm1d pair of ``model`` in place;
    return the (conv, bn) names.

    The model must be in eval semantics (running statistics are used). A BatchNorm that follows
    something other than a conv is left in place, with a warning.
    """
    try:
        pairs = _pairs_by_tracing(model)
    except Exception as exc:  # any tracing failure means: use the fallback
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({exc}); folding only "
            "conv -> BatchNorm pairs adjacent inside nn.Sequential",
            stacklevel=2,
        )
        pairs = _pairs_in_sequentials(model)
    seen_bn = set()
    for conv_name, bn_name in pairs:
        if bn_name in seen_bn:
            continue
        seen_bn.add(bn_name)
        fold_bn_into_conv(model.get_submodule(conv_name), model.get_submodule(bn_name))
        set_submodule(model, bn_name, nn.Identity())
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        warnings.warn(f"BatchNorm layers not folded (no conv feeds them): {left}", stacklevel=2)
    return pairs
