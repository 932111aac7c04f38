"""Assign per-layer weight bits by clustering coding lengths (Algorithm 1), with a size budget."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from torch import nn

from ..quant.errors import QuantConfigError
from .coding_length import coding_length
from .config import MixedConfig

MB = 2**20
EPS2_GRID = [10.0**e for e in np.arange(-6.0, 2.01, 0.25)]


class MixedPrecisionError(QuantConfigError):
    """Bad mixed-precision settings, or a budget no allocation meets."""


@dataclass
class LayerBits:
    name: str
    params: int
    length: float
    bits: int
    fixed: bool  # first/last layer: bits set by their own keys, not by the clustering


def check_mixed(config: MixedConfig, layers: int | None = None) -> None:
    """Every check on the settings; ``layers`` (how many get clustered bits) when known."""
    check_bit_list(list(config.bit_list or []), layers)
    if not config.eps2 > 0:
        raise MixedPrecisionError(f"quant.mixed.eps2={config.eps2} must be > 0")
    if config.budget_mb is not None and not config.budget_mb > 0:
        raise MixedPrecisionError(f"quant.mixed.budget_mb={config.budget_mb} must be > 0")


def check_bit_list(bit_list: list[int], layers: int | None = None) -> list[int]:
    if not bit_list:
        raise MixedPrecisionError("quant.mixed.bit_list is empty")
    if any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in bit_list):
        raise MixedPrecisionError(f"quant.mixed.bit_list={bit_list}: every entry must be in 2..8")
    if list(bit_list) != sorted(set(bit_list)):
        raise MixedPrecisionError(
            f"quant.mixed.bit_list={bit_list} must be strictly ascending (e.g. [3, 4, 5, 6])"
        )
    if layers is not None and len(bit_list) > layers:
        raise MixedPrecisionError(
            f"quant.mixed.bit_list has {len(bit_list)} bit widths for {layers} layer(s) to "
            "assign: use fewer bit widths than layers"
        )
    return list(bit_list)


def cluster_bits(lengths: list[float], bit_list: list[int], seed: int = 0) -> list[int]:
    """k-means (k = len(bit_list)) on the coding lengths; sorted centres get sorted bits."""
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
) -> list[LayerBits]:  # fmt: skip
    """Per-layer weight bits for ``layers`` (in order); ``fixed`` layers keep their bits."""
    bit_list = list(config.bit_list or [])
    free = [(n, m) for n, m in layers if n not in fixed]
    check_mixed(config, len(free))
    params = [m.weight.numel() for _, m in layers]

    def table(eps2: float, bits_free: list[int], lengths: list[float]) -> list[LayerBits]:
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

    if config.budget_mb is None:
        lengths = lengths_at(config.eps2)
        return table(config.eps2, cluster_bits(lengths, bit_list, seed), lengths)
    return _fit_budget(layers, free, params, bit_list, config.budget_mb, seed, table, lengths_at)


def _fit_budget(layers, free, params, bit_list, budget, seed, table, lengths_at):  # noqa: ANN001, ANN202
    """Largest allocation within the budget over an eps2 grid, merging the top clusters down
    (the highest bit widths replaced by the next lower ones) when no plain clustering fits."""
    best: tuple[float, list[LayerBits]] | None = None
    smallest = math.inf
    for eps2 in EPS2_GRID:
        lengths = lengths_at(eps2)
        bits = cluster_bits(lengths, bit_list, seed)
        for drop in range(len(bit_list)):  # drop = how many top bit widths are merged down
            cap = bit_list[len(bit_list) - 1 - drop]
            capped = [min(b, cap) for b in bits]
            rows = table(eps2, capped, lengths)
            size = size_mb(params, [r.bits for r in rows])
            smallest = min(smallest, size)
            if size <= budget and (best is None or size > best[0]):
                best = (size, rows)
            if size <= budget:
                break
    if best is None:
        raise MixedPrecisionError(
            f"quant.mixed.budget_mb={budget} cannot be met: the smallest allocation with "
            f"bit_list {bit_list} (first/last layers fixed) is {smallest:.4f} MB"
        )
    return best[1]
