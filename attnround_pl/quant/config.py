"""Settings of the quantized model, validated in one place.

The settings of one rounding live beside it (``rounding.AttentionSettings``,
``rounding.AdaRoundSettings``), QDrop's dropping beside the activation quantizer
(``act_quant.DropSettings``); the mixed-precision allocation is a step before quantization with
its own section (``mixed.MixedConfig``, ``mixed:`` in YAML). Keys of earlier versions
(``MOVED_KEYS``) are read from saved files by ``QuantConfig.from_dict`` and refused on the
command line with the key that replaced them (``moved_key_message``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import check_finite
from .act_border import BORDERS
from .act_quant import DropSettings, check_act_bits
from .errors import QuantConfigError
from .grid import check_bits
from .placement import check_placement
from .profiles import DEFAULT, apply_profile, check_profile, check_profile_name
from .rounding import ROUNDINGS, rounding_settings

# A key of an earlier version -> the key that holds the setting now (dotted from the top level).
MOVED_KEYS = {
    "quant.tau": "quant.rounding_args.tau",
    "quant.adaround_reg_weight": "quant.rounding_args.reg_weight",
    "quant.adaround_beta_start": "quant.rounding_args.beta_start",
    "quant.adaround_beta_end": "quant.rounding_args.beta_end",
    "quant.adaround_warmup": "quant.rounding_args.warmup",
    "quant.drop_prob": "quant.drop.prob",
    "quant.mixed": "mixed",
}
# The flat rounding keys of earlier versions: old key -> (the rounding it set, its key now).
_OLD_ROUNDING_KEYS = {
    "tau": ("attention", "tau"),
    "adaround_reg_weight": ("adaround", "reg_weight"),
    "adaround_beta_start": ("adaround", "beta_start"),
    "adaround_beta_end": ("adaround", "beta_end"),
    "adaround_warmup": ("adaround", "warmup"),
}


def moved_key_message(key: str) -> str | None:
    """One line for a key of an earlier version (``quant.tau``, ``quant.mixed.bit_list``):
    where the setting is now, on the command line and in YAML; None for any other key."""
    for old, new in MOVED_KEYS.items():
        if key == old or key.startswith(f"{old}."):
            now = new + key[len(old):]
            if "." not in now:  # a whole section moved: --mixed.KEY
                return (f"{key} is now the section {now}: write --{now}.KEY VALUE, or "
                        f"{now}: {{KEY: VALUE}} in YAML")
            parts = now.split(".")
            yaml = "".join(f"{p}: {{" for p in parts[:-1]) + f"{parts[-1]}: VALUE" + "}" * (
                len(parts) - 1
            )
            return f"{key} is now {now}: write --{now} VALUE, or {yaml} in YAML"
    return None


def default_act_border(rounding: str, profile: str = DEFAULT) -> str:
    """The activation border ``act_border: null`` stands for: AQuant's learned border
    (``aquant``, the default recipe's) where the weights' rounding learns in the reconstruction
    that learns the border too; ``nearest`` with a fixed rounding (nothing learns it) and under
    profile ``tensorrt`` (a learned border is no plain INT8 Q/DQ)."""
    learns = rounding in ROUNDINGS and ROUNDINGS[rounding].learnable
    return "aquant" if learns and profile == DEFAULT else "nearest"


@dataclass
class QuantConfig:
    """What ``quantize_model`` builds.

    ``a_bits = 32`` means activations stay float (W4A32). The first layer's weights and input
    (the network input) and the last layer's weights and input keep their own bit widths, 8 by
    default as in the paper. ``rounding`` names the rounding function and ``rounding_args``
    holds its own settings (None or a missing key: its defaults), checked against its settings
    class: ``{tau: 0.5}`` for attention (``rounding.AttentionSettings``); ``{reg_weight: 0.01,
    beta_start: 20, beta_end: 2, warmup: 0.2}`` for adaround (``rounding.AdaRoundSettings``);
    none for nearest, floor, ceil, stochastic. ``seed`` seeds every random choice (stochastic
    rounding, Attention Round's init): layer ``i`` uses ``seed * 1_000_003 + i``.
    ``layer_w_bits`` sets the weight bits of named layers (a mixed-precision allocation, see
    ``mixed``, is handed to ``quantize_model`` the same way); the first/last layer keys win.
    ``act_border="aquant"`` learns AQuant's rounding border for every activation quantizer;
    None (the default) is resolved by ``validate``: ``aquant`` where the weights' rounding
    learns (attention, adaround) under the default profile, ``nearest`` with a fixed rounding
    or profile ``tensorrt`` (``default_act_border``).
    ``drop`` is QDrop's dropping (``act_quant.DropSettings``: ``prob``, 0 = off).
    ``act_placement`` is where activations are quantized (``placement``): ``layers`` at every
    Conv/Linear input, ``blocks`` once at each block's input as BRECQ and QDrop do.
    ``profile`` names the runtime the grids are made for (``profiles``): ``tensorrt`` sets
    ``w_symmetric`` (the effective value is what ``to_dict`` records) and signed per-tensor
    activation grids, and ``validate`` refuses any bit width other than 8, per-tensor weights
    and the AQuant border with it.

    Args:
        rounding: the rounding function: attention, adaround, nearest, floor, ceil, stochastic.
        rounding_args: the chosen rounding's own settings, null for its defaults: attention
            {tau: 0.5}; adaround {reg_weight: 0.01, beta_start: 20, beta_end: 2, warmup: 0.2};
            the others none. One key: --quant.rounding_args.tau 0.25.
        act_border: 'nearest', or 'aquant' (AQuant's learned rounding border, the default
            recipe's); null: 'aquant' with a learned rounding, 'nearest'
            with a fixed one or with profile 'tensorrt'.
        layer_w_bits: weight bits of named layers ({layer name: bits}).
        act_placement: 'layers' (each Conv/Linear input quantized) or 'blocks' (each block's
            input quantized once, so the identity shortcut carries quantized values: the
            placement of BRECQ and QDrop).
        scale_search_p: the exponent p of the error mean |x - x_hat|^p that the weight scale
            and activation step searches minimise: BRECQ's 2.4 (the default, the ``attnround``
            recipe's), or 2 (the MSE, the paper's setting: the ``attention`` recipe).
        profile: 'default', or 'tensorrt' (what TensorRT's explicit quantization takes: INT8
            weights symmetric per output channel, INT8 activations per tensor, zero points 0;
            every grid 8 bits).
    """

    w_bits: int = 4
    a_bits: int = 4
    rounding: str = "attention"
    rounding_args: dict[str, Any] | None = None
    seed: int = 0
    first_layer_w_bits: int = 8
    first_layer_a_bits: int = 8
    last_layer_w_bits: int = 8
    last_layer_a_bits: int = 8
    w_per_channel: bool = True
    w_symmetric: bool = False
    act_border: str | None = None
    drop: DropSettings = field(default_factory=DropSettings)
    layer_w_bits: dict[str, int] | None = None
    profile: str = DEFAULT
    act_placement: str = "layers"
    scale_search_p: float = 2.4

    def __post_init__(self) -> None:
        if isinstance(self.drop, dict):
            self.drop = DropSettings(**self.drop)
        apply_profile(self)

    def validate(self) -> QuantConfig:
        check_finite(self, "quant", QuantConfigError)
        for key in ("w_bits", "first_layer_w_bits", "last_layer_w_bits"):
            check_bits(getattr(self, key), key)
        for key in ("a_bits", "first_layer_a_bits", "last_layer_a_bits"):
            check_act_bits(getattr(self, key), key)
        self.rounding_settings()  # an unknown rounding, or settings it does not take
        if self.act_border is None:
            self.act_border = default_act_border(self.rounding, self.profile)
        if self.act_border not in BORDERS:
            raise QuantConfigError(
                f"unknown act_border {self.act_border!r}; valid: {', '.join(BORDERS)}"
            )
        for name, bits in (self.layer_w_bits or {}).items():
            check_bits(bits, "layer_w_bits", name)
        self.drop.validate()
        check_placement(self.act_placement)
        p = self.scale_search_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1.0 <= p <= 4.0:
            raise QuantConfigError(f"scale_search_p={self.scale_search_p} must be in [1, 4] "
                                   "(2: the MSE; BRECQ's code uses 2.4)")
        check_profile_name(self.profile)
        apply_profile(self)
        check_profile(self)
        return self

    def rounding_settings(self) -> Any:
        """The chosen rounding's settings (its settings dataclass), checked."""
        return rounding_settings(self.rounding, self.rounding_args)

    def layer_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict; ``rounding_args`` in full (every setting of the
        chosen rounding, defaults included), as checkpoints and reports record them."""
        out = asdict(self)
        if self.rounding in ROUNDINGS:
            try:
                out["rounding_args"] = asdict(self.rounding_settings())
            except QuantConfigError:  # not validated: kept as given
                pass
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """The settings a checkpoint, state file or report.json recorded, of this version or an
        earlier one: the flat keys of earlier versions move to where they are now (``tau`` and
        ``adaround_*`` into ``rounding_args`` when they belong to the recorded rounding,
        ``drop_prob`` into ``drop``; ``mixed`` is its own section now and is left out: a saved
        model's per-layer bits are in its layers). Keys gone from this version are dropped
        while they hold their off value (false, null, 0); any other is a QuantConfigError."""
        data = dict(data)
        rounding = data.get("rounding", "attention")
        old_args = {}
        for old, (owner, key) in _OLD_ROUNDING_KEYS.items():
            if old in data:
                value = data.pop(old)
                if owner == rounding:
                    old_args[key] = value
        if old_args and data.get("rounding_args") is None:
            data["rounding_args"] = old_args
        if "drop_prob" in data:
            prob = data.pop("drop_prob")
            data.setdefault("drop", {"prob": prob})
        data.pop("mixed", None)
        # saved before the key existed: the border of then (null resolves by validate)
        data.setdefault("act_border", "nearest")
        known = {f.name for f in dataclasses.fields(cls)}
        gone = {k: v for k, v in data.items() if k not in known}
        if any(gone.values()):
            raise QuantConfigError(f"options this version does not have: {gone}")
        return cls(**{k: v for k, v in data.items() if k in known})
