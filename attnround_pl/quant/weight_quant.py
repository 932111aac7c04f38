"""Weight quantizer: a uniform grid, MSE-initialised scales and one rounding function."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .grid import UniformGrid
from .rounding import NearestRounding, Rounding
from .scale_search import search_qparams

_NEAREST = NearestRounding()  # stateless: what ``round_to_nearest`` switches every quantizer to


class WeightQuantizer(nn.Module):
    """``w_hat = s * (q - z)``, ``q = clip(R(w / s) + z, qmin, qmax)`` with rounding function R.

    Scales ``s`` and zero points ``z`` are fixed after the MSE search (per output channel by
    default; ``search=False``: 1 and 0, for a loader that sets them from a file).
    ``symmetric`` uses a signed grid with ``z = 0``; otherwise an unsigned grid with a zero
    point (asymmetric). After ``freeze()`` the integer codes are stored and the rounding's
    parameters dropped; the forward then ignores its input and returns the frozen weights.
    """

    scale: Tensor
    zero_point: Tensor
    codes: Tensor

    def __init__(
        self,
        weight: Tensor,
        bits: int,
        rounding: Rounding,
        per_channel: bool = True,
        symmetric: bool = False,
        search: bool = True,
        search_p: float = 2.0,
    ) -> None:
        super().__init__()
        self.grid = UniformGrid(bits, signed=symmetric)
        self.per_channel = per_channel
        self.symmetric = symmetric
        self.rounding_name = rounding.name
        rows = (
            weight.detach().reshape(weight.shape[0], -1) if per_channel else weight.reshape(1, -1)
        )
        if search:
            scale, zero_point = search_qparams(rows, self.grid, affine=not symmetric, p=search_p)
        else:  # placeholders: a loader overwrites them with the saved state
            scale, zero_point = torch.ones(rows.shape[0]), torch.zeros(rows.shape[0])
        shape = (-1,) + (1,) * (weight.dim() - 1) if per_channel else ()
        self.register_buffer("scale", scale.reshape(shape).to(weight.device))
        self.register_buffer("zero_point", zero_point.reshape(shape).to(weight.device))
        self.register_buffer("codes", torch.zeros(0, dtype=self.code_dtype, device=weight.device))
        self.rounding: Rounding | None = rounding
        self.nearest_override = False
        self.hard_override = False  # see model.as_frozen
        self.learning = False  # see set_learning
        self._scaled: tuple[Tensor, Tensor, Tensor] | None = None  # (w / s, lo, hi)
        rounding.init_state(weight.detach() / self.scale)

    @property
    def bits(self) -> int:
        return self.grid.bits

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.int8 if self.grid.signed else torch.uint8

    @property
    def frozen(self) -> bool:
        return self.rounding is None

    def _bounds(self) -> tuple[Tensor, Tensor]:
        return self.grid.qmin - self.zero_point, self.grid.qmax - self.zero_point

    def set_learning(self, learning: bool) -> None:
        """While learning (a unit's reconstruction, where the float weight, the scales and
        the device stay fixed), ``w / s`` and the bounds are computed once, not every step."""
        self.learning = learning
        self.__dict__["_scaled"] = None
        if self.rounding is not None:
            self.rounding.set_learning(learning)

    def _scaled_weight(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cached = self._scaled
        if cached is not None and self.learning:
            return cached
        lo, hi = self._bounds()
        scaled = (weight / self.scale, lo, hi)
        if self.learning and not weight.requires_grad:
            self.__dict__["_scaled"] = scaled  # a plain attribute: no buffer, not saved
        return scaled

    def forward(self, weight: Tensor) -> Tensor:
        if self.rounding is None:
            return self.scale * (self.codes.to(self.scale.dtype) - self.zero_point)
        x, lo, hi = self._scaled_weight(weight)
        rounding = _NEAREST if self.nearest_override else self.rounding
        if self.hard_override:  # the codes freezing would store, without freezing
            return self.scale * rounding.hard_codes(x, lo, hi)
        return rounding.scaled(x, lo, hi, self.scale)

    @torch.no_grad()
    def integer_codes(self, weight: Tensor) -> Tensor:
        """The integers ``q`` in ``[qmin, qmax]`` this quantizer gives (or holds, once frozen)."""
        if self.rounding is None:
            return self.codes.clone()
        lo, hi = self._bounds()
        offsets = self.rounding.hard_codes(weight.detach() / self.scale, lo, hi)
        return (offsets + self.zero_point).to(self.code_dtype)

    @torch.no_grad()
    def nearest_codes(self, weight: Tensor) -> Tensor:
        """The integers round-to-nearest gives (what ``round_to_nearest`` computes with)."""
        lo, hi = self._bounds()
        offsets = _NEAREST.hard_codes(weight.detach() / self.scale, lo, hi)
        return (offsets + self.zero_point).to(self.code_dtype)

    @torch.no_grad()
    def freeze_nearest(self, weight: Tensor) -> None:
        """Store round-to-nearest codes, whatever the rounding learned (frozen or not)."""
        self.codes = self.nearest_codes(weight)
        self.rounding = None

    @torch.no_grad()
    def freeze(self, weight: Tensor) -> None:
        """Store the hard integer codes and drop the rounding's learnable state."""
        if self.rounding is None:
            return
        self.codes = self.integer_codes(weight)
        self.rounding = None

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        sym = "symmetric" if self.symmetric else "asymmetric"
        state = "frozen" if self.frozen else self.rounding_name
        return f"bits={self.bits}, {kind}, {sym}, {state}"
