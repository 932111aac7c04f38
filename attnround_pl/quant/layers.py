"""Quantized Conv1d / Conv2d / Linear: a float layer with a weight and an input quantizer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .act_quant import ActQuantizer
from .weight_quant import WeightQuantizer


class QuantLayer(nn.Module):
    """``y = op(a_quant(x), w_quant(W)) + b``; the float layer keeps W and b untouched.

    ``weight_enabled`` / the input quantizer's ``enabled`` switch either side back to float.
    """

    def __init__(
        self, layer: nn.Module, weight_quantizer: WeightQuantizer, input_quantizer: ActQuantizer
    ) -> None:
        super().__init__()
        self.layer = layer
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self.weight_enabled = True
        layer.weight.requires_grad_(False)
        if layer.bias is not None:
            layer.bias.requires_grad_(False)

    def quantized_weight(self) -> Tensor:
        if not self.weight_enabled:
            return self.layer.weight
        return self.weight_quantizer(self.layer.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._op(self.input_quantizer(x), self.quantized_weight())

    def _op(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def freeze(self) -> None:
        self.weight_quantizer.freeze(self.layer.weight)

    def freeze_nearest(self) -> None:
        """Freeze to the round-to-nearest codes instead of the learned ones."""
        self.weight_quantizer.freeze_nearest(self.layer.weight)


class QuantConv2d(QuantLayer):
    def _op(self, x: Tensor, weight: Tensor) -> Tensor:
        return self.layer._conv_forward(x, weight, self.layer.bias)


class QuantConv1d(QuantLayer):
    def _op(self, x: Tensor, weight: Tensor) -> Tensor:
        return self.layer._conv_forward(x, weight, self.layer.bias)


class QuantLinear(QuantLayer):
    def _op(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.layer.bias)


QUANT_LAYER_TYPES: dict[type[nn.Module], type[QuantLayer]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}
