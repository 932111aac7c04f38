"""The one exception type the quantization core raises for bad input."""


class QuantConfigError(ValueError):
    """A quantization setting is invalid; the message names the value and the layer if known."""
