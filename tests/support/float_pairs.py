"""Small float networks and their quantized twins, shared by the tests of the unit losses."""

from __future__ import annotations

import torch
from torch import nn

from attnround_pl.models import build_model
from attnround_pl.quant import QuantConfig, fold_batchnorms, quantize_model


def resnet20_pair() -> tuple[nn.Module, nn.Module]:
    """A random-weight ResNet-20 quantized at W2A4 with Attention Round, and its float twin
    with BatchNorm folded (eval mode)."""
    model = build_model("resnet20", weights=None)
    q = quantize_model(model, QuantConfig(w_bits=2, a_bits=4, rounding="attention"))
    f = build_model("resnet20", weights=None)
    f.load_state_dict(model.state_dict())
    fold_batchnorms(f)
    return q, f.eval()


def small_cnn() -> nn.Module:
    """Two convs, pooling and a classifier for 3-channel images, seeded (eval mode)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()
