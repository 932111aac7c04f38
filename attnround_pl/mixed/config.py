"""Settings of the mixed-precision bit allocation (a plain dataclass, no imports from quant/)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SettingError, check_finite


@dataclass
class MixedConfig:
    """Per-layer weight bits by coding length (Algorithm 1 of the paper).

    Args:
        bit_list: candidate weight bits, ascending (e.g. [3, 4, 5, 6]); null = single precision.
        eps2: the distortion eps^2 of eq. 12 (> 0).
        budget_mb: if set, the model size (quantized layers, params x bits / 8, 1 MB = 2^20
            bytes) must not exceed it; eps2 and the cluster-to-bits map are chosen for that.
        budget_bits: the same with the size of single precision at this many bits as the
            budget (first/last layers at their own bits): "no larger than uniform b-bit".
    """

    bit_list: list[int] | None = None
    eps2: float = 1e-3
    budget_mb: float | None = None
    budget_bits: int | None = None

    @property
    def enabled(self) -> bool:
        return self.bit_list is not None

    def validate(
        self, group: str = "quant.mixed", error: type[SettingError] = SettingError
    ) -> MixedConfig:
        """Refuse NaN and infinity in ``eps2`` and ``budget_mb`` (enabled or not), as
        ``error``; the rest of the allocation's settings ``mixed.allocation.check_mixed``
        checks."""
        check_finite(self, group, error)
        return self
