"""Uniform affine integer grids: ``w_hat = s * (q - z)`` with integer ``q`` in ``[qmin, qmax]``."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QuantConfigError

MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int, what: str = "bits", where: str | None = None) -> int:
    """Return ``bits`` if it is an int in 2..8, else raise a QuantConfigError naming it."""
    place = f" for layer '{where}'" if where else ""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise QuantConfigError(
            f"{what}={bits!r}{place} must be an integer in {MIN_BITS}..{MAX_BITS}"
        )
    if not MIN_BITS <= bits <= MAX_BITS:
        raise QuantConfigError(f"{what}={bits}{place} is outside {MIN_BITS}..{MAX_BITS}")
    return bits


@dataclass(frozen=True)
class UniformGrid:
    """A b-bit integer grid: signed ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b - 1]``.

    The grid only knows its integer range; scales and zero points (per tensor or per
    output channel) live with the quantizer that uses it.
    """

    bits: int
    signed: bool

    def __post_init__(self) -> None:
        check_bits(self.bits)

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def levels(self) -> int:
        return 2**self.bits
