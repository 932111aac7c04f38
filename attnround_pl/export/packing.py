"""Integer codes of any width from 1 to 8 bits packed into bytes: the state file's layout.

The layout ("lsb-first") is one little-endian bit stream: code ``i`` (in C order over the
weight's shape) takes bits ``i*b .. i*b + b - 1`` of the stream, its least significant bit
first, and bit ``j`` of the stream is bit ``j % 8`` (value ``1 << (j % 8)``) of byte ``j // 8``;
the last byte is padded with zero bits. A signed code is stored as its ``b``-bit two's
complement. So 4-bit codes go two a byte, the first in the low nibble (ONNX's INT4 layout),
2-bit codes four a byte from the low bits up, 8-bit codes one a byte, and 3-bit codes eight in
three bytes, a code crossing a byte boundary where the stream does (code 2 of a 3-bit stream
is bits 6-7 of byte 0 and bit 0 of byte 1).

Unpacking needs numpy only (``unpack_codes``; the export docs show the same in a few lines):

>>> import numpy as np
>>> packed = pack_codes(np.array([-4, 3, -1, 0, 2]), bits=3, signed=True)
>>> packed.tolist(), packed.nbytes
([220, 33], 2)
>>> unpack_codes(packed, bits=3, signed=True, count=5).tolist()
[-4, 3, -1, 0, 2]
"""

from __future__ import annotations

import numpy as np

LAYOUT = "lsb-first"


def packed_bytes(count: int, bits: int) -> int:
    """The bytes ``count`` codes of ``bits`` bits take packed."""
    return (count * bits + 7) // 8


def _check(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"codes of {bits!r} bits cannot be packed: 1 to 8 bits")


def pack_codes(codes: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """``codes`` (integers of a ``bits``-bit grid, any shape, read in C order) as packed
    uint8 bytes in the ``LAYOUT`` above. A code outside the grid is a ValueError."""
    _check(bits)
    values = np.asarray(codes).astype(np.int64).ravel()
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if values.size and (values.min() < lo or values.max() > hi):
        kind = "a signed" if signed else "an unsigned"
        raise ValueError(f"codes {values.min()}..{values.max()} do not fit {kind} {bits}-bit "
                         f"grid ({lo}..{hi})")
    fields = (values & ((1 << bits) - 1)).astype(np.uint8)
    if bits == 8:
        return fields
    stream = (fields[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # [count, bits], LSB first
    return np.packbits(stream.ravel(), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, signed: bool, count: int) -> np.ndarray:
    """The ``count`` codes of ``packed`` (see ``pack_codes``) as int16, flat."""
    _check(bits)
    data = np.asarray(packed, dtype=np.uint8).ravel()
    if data.size != packed_bytes(count, bits):
        raise ValueError(f"{data.size} bytes hold no {count} codes of {bits} bits "
                         f"({packed_bytes(count, bits)} bytes)")
    if bits == 8:
        fields = data.astype(np.int16)
    else:
        stream = np.unpackbits(data, bitorder="little")[: count * bits].reshape(count, bits)
        fields = (stream.astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(
            axis=1, dtype=np.int16)
    if signed:  # two's complement: a set top bit means minus 2^bits
        fields = fields - ((fields >> (bits - 1)) & 1) * (1 << bits)
    return fields.astype(np.int16)
