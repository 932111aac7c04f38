"""The two embedded default models, sized for 28x28 one-channel Fashion-MNIST images.

- ``resnet20``: the CIFAR-style ResNet-20 (He et al. 2016): a 3x3 stem, three stages of three
  BasicBlocks (16, 32, 64 channels; stride 2 at stages 2 and 3, 1x1 conv shortcut where the
  shape changes), global average pooling, a linear head.
- ``mobilenetv2``: a small MobileNetV2-style net built from inverted residual blocks
  (1x1 expand, 3x3 depthwise, 1x1 project), the kind whose depthwise convs make low-bit PTQ hard.

Both use torchvision's own block classes, so one split rule serves them and torchvision's models.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock
from torchvision.ops.misc import Conv2dNormActivation

from ..errors import SettingError

NUM_CLASSES = 10


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int = 20,
        num_classes: int = NUM_CLASSES,
        in_channels: int = 1,
        stem_stride: int = 2,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise SettingError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, inplanes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or inplanes != planes:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes, 1, s, bias=False), nn.BatchNorm2d(planes)
                    )
                blocks.append(BasicBlock(inplanes, planes, s, down))
                inplanes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class SmallMobileNetV2(nn.Module):
    # (expand ratio t, output channels c, repeats n, first stride s), as in MobileNetV2's table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 1))

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 1, last: int = 256):
        super().__init__()
        layers: list[nn.Module] = [
            Conv2dNormActivation(in_channels, 32, 3, 2, activation_layer=nn.ReLU6)
        ]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(Conv2dNormActivation(cin, last, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def resnet20(num_classes: int = NUM_CLASSES) -> CifarResNet:
    return CifarResNet(20, num_classes)


def mobilenetv2_small(num_classes: int = NUM_CLASSES) -> SmallMobileNetV2:
    return SmallMobileNetV2(num_classes)
