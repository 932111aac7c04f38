import torch
import torch.nn.functional as F
from torch import nn

from attnround_pl.quant import (
    ActQuantizer,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
    make_rounding,
)


def _calibrate(aq, x):
    aq.start_observing()
    aq(x)
    aq.finish_observing()


def test_quant_conv_equals_conv_of_quantized_tensors():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    x = torch.randn(2, 4, 9, 9)
    layer = QuantConv2d(
        conv, WeightQuantizer(conv.weight, 4, make_rounding("nearest")), ActQuantizer(4)
    )
    _calibrate(layer.input_quantizer, x)
    expected = F.conv2d(
        layer.input_quantizer(x),
        layer.weight_quantizer(conv.weight),
        conv.bias,
        stride=2,
        padding=1,
        groups=2,
    )
    assert torch.equal(layer(x), expected)
    assert not conv.weight.requires_grad  # float weights are not trained


def test_quant_linear_float_switches():
    lin = nn.Linear(8, 3)
    x = torch.randn(5, 8)
    layer = QuantLinear(
        lin, WeightQuantizer(lin.weight, 2, make_rounding("floor")), ActQuantizer(2)
    )
    _calibrate(layer.input_quantizer, x)
    layer.weight_enabled = False
    layer.input_quantizer.enabled = False
    assert torch.allclose(layer(x), lin(x))
    layer.weight_enabled = True
    assert not torch.allclose(layer(x), lin(x))


def test_gradient_reaches_rounding_and_step_only():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6)
    layer = QuantConv2d(
        conv, WeightQuantizer(conv.weight, 4, make_rounding("attention", tau=0.5)), ActQuantizer(4)
    )
    _calibrate(layer.input_quantizer, x)
    layer(x).pow(2).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    assert set(grads) == {"weight_quantizer.rounding.alpha", "input_quantizer.step"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
