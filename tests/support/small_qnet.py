"""A small frozen quantized CNN with every op the exporters map, for the export tests."""

import torch
from torch import nn

from attnround_pl.quant import QuantConfig, calibrate_activations, freeze_model, quantize_model


class SmallNet(nn.Module):
    """conv-bn-relu stem, a residual pair, max pool, depthwise conv with ReLU6, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.relu6 = nn.ReLU6()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.conv_b(self.relu(self.conv_a(x))))
        return self.head(self.relu6(self.dw(self.pool(x))))


def small_qnet(seed: int = 0, border: str = "nearest", **quant) -> nn.Module:
    """SmallNet quantized (W4A4 inside, 8-bit first/last), activations calibrated, frozen.

    With ``border="aquant"`` every border gets random non-zero (k, c, g) so it matters. Ranges by
    the MSE (``scale_search_p`` 2.0, what these tests were written with; the package's default
    is 2.4) unless ``quant`` says otherwise: with 2.4 one of conv_b's inputs lands exactly on a
    rounding tie, where onnxruntime and PyTorch may round apart (float noise, not a bug)."""
    torch.manual_seed(seed)
    net = SmallNet().eval()
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    config = QuantConfig(**{"rounding": "nearest", "act_border": border, "seed": seed,
                            "scale_search_p": 2.0, **quant})
    qnet = quantize_model(net, config)
    calibrate_activations(qnet, [torch.randn(16, 3, 16, 16) for _ in range(2)])
    freeze_model(qnet)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in qnet.modules():
            if getattr(m, "border", None) is not None and hasattr(m.border, "k"):
                for p in (m.border.k, m.border.c):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    qnet.quant_config = config
    return qnet
