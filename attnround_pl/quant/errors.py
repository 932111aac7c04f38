"""The one exception type the quantization core raises for bad input."""

from ..errors import SettingError


class QuantConfigError(SettingError):
    """A quantization setting is invalid; the message names the value and the layer if known."""
