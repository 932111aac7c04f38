import numpy as np
import pytest

from attnround_pl.export import pack_codes, unpack_codes
from attnround_pl.export.packing import packed_bytes
from attnround_pl.export.qdq_onnx import _int_tensor


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_every_width_round_trips_in_ceil_n_bits_over_8_bytes(bits, signed):
    rng = np.random.default_rng(bits)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    for count in (0, 1, 7, 8, 9, 1001):
        codes = rng.integers(lo, hi + 1, count)
        packed = pack_codes(codes, bits, signed)
        assert packed.dtype == np.uint8 and packed.size == packed_bytes(count, bits)
        assert packed.size == -(-count * bits // 8)
        np.testing.assert_array_equal(unpack_codes(packed, bits, signed, count), codes)


def test_layout_is_one_lsb_first_bit_stream():
    # 4 bits: the first code in the low nibble, as ONNX's INT4 / UINT4 initializers
    assert pack_codes(np.array([1, 2, 15]), 4, False).tolist() == [0x21, 0x0F]
    codes = np.array([[-8, 7, -1], [3, 0, -5]])
    onnx_bytes = _int_tensor("w", codes, 4, signed=True).raw_data
    assert pack_codes(codes, 4, True).tobytes() == onnx_bytes
    # 2 bits: four a byte from the low bits up
    assert pack_codes(np.array([1, 2, 3, 0, 3]), 2, False).tolist() == [0b00111001, 0b11]
    # 3 bits: code 2 spans bits 6-7 of byte 0 and bit 0 of byte 1
    assert pack_codes(np.array([0, 0, 0b101]), 3, False).tolist() == [0b01000000, 0b1]
    assert pack_codes(np.array([-4, 3, -1, 0, 2]), 3, True).tolist() == [220, 33]


def test_codes_off_the_grid_and_wrong_sizes_are_refused():
    with pytest.raises(ValueError, match="do not fit an unsigned 2-bit grid"):
        pack_codes(np.array([0, 4]), 2, False)
    with pytest.raises(ValueError, match="signed 4-bit grid"):
        pack_codes(np.array([-9]), 4, True)
    with pytest.raises(ValueError, match="1 to 8 bits"):
        pack_codes(np.array([0]), 9, False)
    with pytest.raises(ValueError, match="3 bytes hold no 9 codes of 3 bits"):
        unpack_codes(np.zeros(3, np.uint8), 3, False, 9)
