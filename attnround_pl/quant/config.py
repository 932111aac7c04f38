"""Settings of the quantized model, validated in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import check_finite
from ..mixed.config import MixedConfig
from .act_border import BORDERS
from .act_quant import check_act_bits, check_drop_prob
from .errors import QuantConfigError
from .grid import check_bits
from .rounding import ROUNDINGS, check_tau


@dataclass
class QuantConfig:
    """What ``quantize_model`` builds.

    ``a_bits = 32`` means activations stay float (W4A32). The first layer's weights and input
    (the network input) and the last layer's weights and input keep their own bit widths, 8 by
    default as in the paper. ``seed`` seeds every random choice (stochastic rounding, Attention
    Round's init): layer ``i`` uses ``seed * 1_000_003 + i``. ``layer_w_bits`` sets the weight
    bits of named layers; ``mixed`` (with a ``bit_list``) derives them by coding length
    (Algorithm 1). The first/last layer keys win over both. ``act_border="aquant"`` learns
    AQuant's rounding border for every activation quantizer. ``drop_prob`` is QDrop's
    probability of keeping an activation float during reconstruction (0 = off; QDrop: 0.5).
    """

    w_bits: int = 4
    a_bits: int = 4
    rounding: str = "attention"
    tau: float = 0.5
    seed: int = 0
    first_layer_w_bits: int = 8
    first_layer_a_bits: int = 8
    last_layer_w_bits: int = 8
    last_layer_a_bits: int = 8
    w_per_channel: bool = True
    w_symmetric: bool = False
    adaround_reg_weight: float = 0.01
    adaround_beta_start: float = 20.0
    adaround_beta_end: float = 2.0
    adaround_warmup: float = 0.2
    act_border: str = "nearest"
    drop_prob: float = 0.0
    layer_w_bits: dict[str, int] | None = None
    mixed: MixedConfig = field(default_factory=MixedConfig)

    def __post_init__(self) -> None:
        if isinstance(self.mixed, dict):
            self.mixed = MixedConfig(**self.mixed)

    def validate(self) -> QuantConfig:
        check_finite(self, "quant", QuantConfigError)
        self.mixed.validate("quant.mixed", QuantConfigError)
        for key in ("w_bits", "first_layer_w_bits", "last_layer_w_bits"):
            check_bits(getattr(self, key), key)
        for key in ("a_bits", "first_layer_a_bits", "last_layer_a_bits"):
            check_act_bits(getattr(self, key), key)
        if self.rounding not in ROUNDINGS:
            raise QuantConfigError(
                f"unknown rounding {self.rounding!r}; valid names: {', '.join(sorted(ROUNDINGS))}"
            )
        check_tau(self.tau)
        if self.act_border not in BORDERS:
            raise QuantConfigError(
                f"unknown act_border {self.act_border!r}; valid: {', '.join(BORDERS)}"
            )
        for name, bits in (self.layer_w_bits or {}).items():
            check_bits(bits, "layer_w_bits", name)
        if self.mixed.enabled:
            from ..mixed.allocation import check_mixed

            check_mixed(self.mixed)
        check_drop_prob(self.drop_prob)
        if not 0.0 <= self.adaround_warmup < 1.0:
            raise QuantConfigError(f"adaround_warmup={self.adaround_warmup} must be in [0, 1)")
        if self.adaround_reg_weight < 0:
            raise QuantConfigError(f"adaround_reg_weight={self.adaround_reg_weight} must be >= 0")
        return self

    def rounding_kwargs(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "reg_weight": self.adaround_reg_weight,
            "beta_start": self.adaround_beta_start,
            "beta_end": self.adaround_beta_end,
            "warmup": self.adaround_warmup,
        }

    def layer_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
