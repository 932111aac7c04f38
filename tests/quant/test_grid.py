import pytest

from attnround_pl.quant import QuantConfigError, UniformGrid, check_bits


@pytest.mark.parametrize(
    ("bits", "signed", "qmin", "qmax"),
    [(2, False, 0, 3), (2, True, -2, 1), (4, False, 0, 15), (4, True, -8, 7), (8, True, -128, 127)],
)
def test_grid_range(bits, signed, qmin, qmax):
    grid = UniformGrid(bits, signed)
    assert (grid.qmin, grid.qmax) == (qmin, qmax)
    assert grid.levels == qmax - qmin + 1


@pytest.mark.parametrize("bits", [1, 9, 0, -3, 16])
def test_bits_out_of_range_named(bits):
    with pytest.raises(QuantConfigError, match=rf"bits={bits}.*outside 2\.\.8"):
        UniformGrid(bits, False)


def test_check_bits_names_layer_and_type():
    with pytest.raises(QuantConfigError, match="w_bits=9 for layer 'conv1'"):
        check_bits(9, "w_bits", "conv1")
    with pytest.raises(QuantConfigError, match="must be an integer"):
        check_bits(4.5, "w_bits")
    with pytest.raises(QuantConfigError, match="must be an integer"):
        check_bits(True, "w_bits")
