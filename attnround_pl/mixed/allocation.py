"""Assign per-layer weight bits by clustering coding lengths (Algorithm 1), with a size budget.

A step before quantization: ``allocate_model`` measures the float model's layers (BatchNorms
folded, in execution order, as ``quant.quantize_model`` takes them) and its ``Allocation``
gives ``quantize_model`` the bits per layer (``layer_bits()``) and the report its table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from ..quant.config import QuantConfig
from ..quant.model import folded_copy
from .coding_length import coding_length
from .config import MixedConfig, MixedPrecisionError, check_bit_list, check_mixed

MB = 2**20
EPS2_GRID = [10.0**e for e in np.arange(-6.0, 2.01, 0.25)]

__all__ = ["Allocation", "LayerBits", "MixedPrecisionError", "allocate_bits",
           "allocate_by_sensitivity", "allocate_model",
           "check_bit_list", "check_mixed", "cluster_bits", "cluster_maps", "size_mb"]


@dataclass
class LayerBits:
    name: str
    params: int
    length: float  # coding length (NaN: fixed, or not computed by the sensitivity method)
    bits: int
    fixed: bool  # first/last layer: bits set by their own keys, not by the clustering
    error: float | None = None  # sensitivity method: output MSE with this layer alone at bits


@dataclass
class Allocation:
    """The per-layer bits and how they were chosen.

    ``eps2`` is the eps^2 the coding lengths were computed at (the configured one, or the one
    the budget search picked); ``budget_mb`` the size limit in force (None: no budget);
    ``cluster_bits`` the bits of each cluster, clusters sorted by centre (``bit_list`` itself
    unless the budget search gave clusters fewer bits).
    """

    rows: list[LayerBits]
    eps2: float
    budget_mb: float | None
    cluster_bits: list[int]
    method: str = "coding_length"

    def size_mb(self) -> float:
        return size_mb([r.params for r in self.rows], [r.bits for r in self.rows])

    def uniform_size_mb(self, bits: int) -> float:
        """Size of single precision at ``bits`` with the fixed layers at their own bits."""
        return size_mb([r.params for r in self.rows], [r.bits if r.fixed else bits
                                                        for r in self.rows])

    def layer_bits(self) -> dict[str, int]:
        """{layer name: weight bits}: what ``quantize_model`` takes as ``layer_w_bits``."""
        return {r.name: r.bits for r in self.rows}


def cluster_bits(lengths: list[float], bit_list: list[int], seed: int = 0) -> list[int]:
    """k-means (k = len(bit_list)) on the coding lengths; sorted centres get sorted bits.

    scikit-learn is imported here, not with the module: its import sets OpenMP environment
    variables (``KMP_DUPLICATE_LIB_OK``, ``KMP_INIT_AT_FORK``), which importing this package
    must not do."""
    from sklearn.cluster import KMeans

    values = np.asarray(lengths, dtype=np.float64).reshape(-1, 1)
    k = len(bit_list)
    with warnings.catch_warnings():  # fewer distinct lengths than k: some clusters stay empty
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(values)
    rank = np.argsort(np.argsort(km.cluster_centers_.ravel()))
    return [bit_list[rank[label]] for label in km.labels_]


def size_mb(params: list[int], bits: list[int]) -> float:
    """Model size of the quantized layers: sum of params x bits / 8, in MB (2^20 bytes)."""
    return sum(p * b for p, b in zip(params, bits, strict=True)) / 8 / MB


def allocate_bits(
    layers: list[tuple[str, nn.Module]], config: MixedConfig, fixed: dict[str, int],
    seed: int = 0,
) -> Allocation:
    """Per-layer weight bits for ``layers`` (in order); ``fixed`` layers keep their bits.

    ``config.budget_bits = b`` is the budget of single precision at b bits (the same ``fixed``
    layers at their own bits): "no larger than uniform b-bit", the comparison of table 4.
    """
    bit_list = list(config.bit_list or [])
    free = [(n, m) for n, m in layers if n not in fixed]
    check_mixed(config, len(free))
    params = [m.weight.numel() for _, m in layers]

    def table(bits_free: list[int], lengths: list[float]) -> list[LayerBits]:
        it = iter(zip(bits_free, lengths, strict=True))
        rows = []
        for (name, _), p in zip(layers, params, strict=True):
            if name in fixed:
                rows.append(LayerBits(name, p, math.nan, fixed[name], True))
            else:
                b, length = next(it)
                rows.append(LayerBits(name, p, length, b, False))
        return rows

    def lengths_at(eps2: float) -> list[float]:
        return [coding_length(m.weight, eps2) for _, m in free]

    budget, label = _budget(config, layers, params, fixed)
    if budget is None:
        lengths = lengths_at(config.eps2)
        rows = table(cluster_bits(lengths, bit_list, seed), lengths)
        return Allocation(rows, config.eps2, None, list(bit_list))
    return _fit_budget(params, bit_list, budget, label, seed, table, lengths_at)


def _budget(config: MixedConfig, layers: list[tuple[str, nn.Module]], params: list[int],
            fixed: dict[str, int]) -> tuple[float | None, str]:
    """(the size limit in MB or None, how to name it in an error)."""
    if config.budget_bits is None:
        return config.budget_mb, f"mixed.budget_mb={config.budget_mb}"
    budget = size_mb(params, [fixed.get(name, config.budget_bits) for name, _ in layers])
    return budget, f"mixed.budget_bits={config.budget_bits} ({budget:.4f} MB)"


def allocate_by_sensitivity(model: nn.Module, layers: list[tuple[str, nn.Module]],
                            config: MixedConfig, fixed: dict[str, int],
                            batches: Sequence[Tensor], quant: QuantConfig) -> Allocation:
    """``mixed.method: sensitivity`` (see ``sensitivity``): each free layer's output error at
    each width of ``bit_list``, then bits lowered greedily from the widest to the budget."""
    from .sensitivity import layer_errors, lower_bits_greedily

    bit_list = list(config.bit_list or [])
    check_mixed(config)
    params = [m.weight.numel() for _, m in layers]
    budget, label = _budget(config, layers, params, fixed)
    free = [(n, m) for n, m in layers if n not in fixed]
    errors = layer_errors(model, free, bit_list, batches, quant)
    counts = {n: p for (n, _), p in zip(layers, params, strict=True)}
    fixed_bits = sum(counts[n] * b for n, b in fixed.items())
    bits = lower_bits_greedily(counts, errors, bit_list, budget * 8 * MB - fixed_bits)
    if bits is None:
        smallest = size_mb(params, [fixed.get(n, bit_list[0]) for n, _ in layers])
        raise MixedPrecisionError(
            f"{label} cannot be met: the smallest allocation with bit_list {bit_list} "
            f"(first/last layers fixed) is {smallest:.4f} MB")
    rows = [LayerBits(n, p, math.nan, fixed[n], True) if n in fixed else
            LayerBits(n, p, math.nan, bits[n], False, errors[n][bits[n]])
            for (n, _), p in zip(layers, params, strict=True)]
    return Allocation(rows, config.eps2, budget, bit_list, method="sensitivity")


def allocate_model(model: nn.Module, config: MixedConfig, quant: QuantConfig,
                   batches: Sequence[Tensor] | None = None) -> Allocation:
    """The allocation of ``model``'s layers as ``quantize_model(model, quant)`` takes them (an
    eval-mode copy, BatchNorms folded, execution order; ``model`` is not modified): the first
    and last layer keep ``quant``'s first/last-layer weight bits, the others get bits by
    ``config.method``: clustered by coding length (k-means seeded with ``quant.seed``), or by
    their output errors measured on ``batches`` (calibration images; needed then). Hand
    ``layer_bits()`` of the result to ``quantize_model(..., layer_w_bits=...)``."""
    folded, order, _ = folded_copy(model)
    layers = [(name, folded.get_submodule(name)) for name in order]
    fixed = {order[0]: quant.first_layer_w_bits, order[-1]: quant.last_layer_w_bits}
    if config.method == "sensitivity":
        if not batches:
            raise MixedPrecisionError("mixed.method=sensitivity measures each layer's error on "
                                      "calibration images: pass batches")
        return allocate_by_sensitivity(folded, layers, config, fixed, batches, quant)
    return allocate_bits(layers, config, fixed, seed=quant.seed)


def cluster_maps(bit_list: list[int]) -> list[list[int]]:
    """The bits for the sorted clusters the budget search tries: ``bit_list`` itself, the top
    d clusters merged down to the next lower width ("cap", d = 1..k-1), and every cluster moved
    d widths down, the lowest ones staying at ``bit_list[0]`` ("shift"). Both keep the order of
    Algorithm 1: a layer never gets fewer bits than one with a smaller coding length."""
    k = len(bit_list)
    caps = [[min(b, bit_list[k - 1 - d]) for b in bit_list] for d in range(k)]
    shifts = [[bit_list[max(0, i - d)] for i in range(k)] for d in range(1, k)]
    return caps + shifts


def _fit_budget(params, bit_list, budget, label, seed, table, lengths_at):
    """Largest allocation within the budget over the eps2 grid and the cluster maps (the
    first one found on a tie: smallest eps2, then ``cluster_maps`` order)."""
    best: tuple[float, Allocation] | None = None
    smallest = math.inf
    maps = cluster_maps(bit_list)
    for eps2 in EPS2_GRID:
        lengths = lengths_at(eps2)
        clusters = [bit_list.index(b) for b in cluster_bits(lengths, bit_list, seed)]
        for bits_of in maps:
            rows = table([bits_of[c] for c in clusters], lengths)
            size = size_mb(params, [r.bits for r in rows])
            smallest = min(smallest, size)
            if size <= budget and (best is None or size > best[0]):
                best = (size, Allocation(rows, float(eps2), budget, bits_of))
    if best is None:
        raise MixedPrecisionError(
            f"{label} cannot be met: the smallest allocation with "
            f"bit_list {bit_list} (first/last layers fixed) is {smallest:.4f} MB"
        )
    return best[1]
