"""A small CNN of two torchvision BasicBlocks (the second with a downsampling shortcut), and its
quantized copy with block input quantizers (``act_placement="blocks"``)."""

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from attnround_pl.quant import QuantConfig, calibrate_activations, freeze_model, quantize_model
from attnround_pl.quant.placement import find_block_consumers, place_block_inputs


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
        self.layer = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.layer(self.stem(x)).mean((2, 3)))


def blocks_qnet(seed: int = 0, freeze: bool = False, **quant) -> tuple[nn.Module, dict]:
    """TwoBlocks quantized (W4A4 inside), both blocks quantizing their inputs, calibrated."""
    torch.manual_seed(seed)
    config = QuantConfig(rounding="nearest", a_bits=4, act_placement="blocks", **quant)
    qnet = quantize_model(TwoBlocks().eval(), config)
    consumers = find_block_consumers(qnet, ["layer.0", "layer.1"], torch.randn(4, 3, 12, 12))
    place_block_inputs(qnet, consumers)
    calibrate_activations(qnet, [torch.randn(8, 3, 12, 12)])
    if freeze:
        freeze_model(qnet)
    qnet.quant_config = config
    return qnet, consumers
