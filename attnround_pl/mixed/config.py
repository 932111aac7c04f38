"""Settings of the mixed-precision bit allocation: the ``mixed`` section of a config (a plain
dataclass and its checks; no torch, numpy or scikit-learn)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SettingError, check_finite

GROUP = "mixed"  # the config section: mixed.bit_list, --mixed.bit_list
METHODS = ("coding_length", "sensitivity")  # MixedConfig.method


class MixedPrecisionError(SettingError):
    """Bad mixed-precision settings, or a budget no allocation meets."""


@dataclass
class MixedConfig:
    """Per-layer weight bits by coding length (Algorithm 1 of the paper) or by measured
    sensitivity, chosen before quantization and handed to ``quantize_model`` as per-layer
    weight bits.

    Args:
        bit_list: candidate weight bits, ascending (e.g. [3, 4, 5, 6]); null = single precision.
        method: ``coding_length`` (the paper's Algorithm 1: k-means on eq. 12's coding
            lengths) or ``sensitivity`` (each layer's output error at each width, measured on
            calibration images, bits lowered greedily to the budget; needs a budget).
        eps2: the distortion eps^2 of eq. 12 (> 0).
        budget_mb: if set, the model size (quantized layers, params x bits / 8, 1 MB = 2^20
            bytes) must not exceed it; eps2 and the cluster-to-bits map are chosen for that.
        budget_bits: the same with the size of single precision at this many bits as the
            budget (first/last layers at their own bits): "no larger than uniform b-bit".
    """

    bit_list: list[int] | None = None
    method: str = "coding_length"
    eps2: float = 1e-3
    budget_mb: float | None = None
    budget_bits: int | None = None

    @property
    def enabled(self) -> bool:
        return self.bit_list is not None

    def validate(self) -> MixedConfig:
        """Refuse NaN and infinity in ``eps2`` and ``budget_mb`` (enabled or not); when
        enabled, every check of ``check_mixed``. Raises MixedPrecisionError."""
        check_finite(self, GROUP, MixedPrecisionError)
        if self.enabled:
            check_mixed(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_mixed(config: MixedConfig, layers: int | None = None) -> None:
    """Every check on the settings; ``layers`` (how many get clustered bits) when known."""
    if config.method not in METHODS:
        raise MixedPrecisionError(f"{GROUP}.method={config.method!r}: one of "
                                  f"{', '.join(METHODS)}")
    clustered = config.method == "coding_length"  # k-means needs no more widths than layers
    check_bit_list(list(config.bit_list or []), layers if clustered else None)
    if not config.eps2 > 0:
        raise MixedPrecisionError(f"{GROUP}.eps2={config.eps2} must be > 0")
    if config.budget_mb is not None and not config.budget_mb > 0:
        raise MixedPrecisionError(f"{GROUP}.budget_mb={config.budget_mb} must be > 0")
    bits = config.budget_bits
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)
                             or not 2 <= bits <= 8):
        raise MixedPrecisionError(f"{GROUP}.budget_bits={bits} must be an integer in 2..8")
    if bits is not None and config.budget_mb is not None:
        raise MixedPrecisionError(
            f"{GROUP}.budget_mb={config.budget_mb} and budget_bits={bits} both set: "
            "give one size limit"
        )
    if config.method == "sensitivity" and bits is None and config.budget_mb is None:
        raise MixedPrecisionError(f"{GROUP}.method=sensitivity needs a size limit "
                                  f"({GROUP}.budget_bits or {GROUP}.budget_mb): without one "
                                  "every layer would keep the widest bits")


def check_bit_list(bit_list: list[int], layers: int | None = None) -> list[int]:
    if not bit_list:
        raise MixedPrecisionError(f"{GROUP}.bit_list is empty")
    if any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in bit_list):
        raise MixedPrecisionError(f"{GROUP}.bit_list={bit_list}: every entry must be in 2..8")
    if list(bit_list) != sorted(set(bit_list)):
        raise MixedPrecisionError(
            f"{GROUP}.bit_list={bit_list} must be strictly ascending (e.g. [3, 4, 5, 6])"
        )
    if layers is not None and len(bit_list) > layers:
        raise MixedPrecisionError(
            f"{GROUP}.bit_list has {len(bit_list)} bit widths for {layers} layer(s) to "
            "assign: use fewer bit widths than layers"
        )
    return list(bit_list)
