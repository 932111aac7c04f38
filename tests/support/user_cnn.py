"""A user's own CNN, as it would live in the user's project (not in the package): a residual
written in ``forward``, a concat of two branches and a 1-D conv head. Tests import it, and copy
this file next to a CLI run to use it by class path (``user_cnn.UserCNN``)."""

import torch
import torch.nn.functional as F
from torch import nn


class UserCNN(nn.Module):
    def __init__(self, width: int = 8, classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.res_a = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.res_a_bn = nn.BatchNorm2d(width)
        self.res_b = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.res_b_bn = nn.BatchNorm2d(width)
        self.branch_1x1 = nn.Conv2d(width, width, 1)
        self.branch_3x3 = nn.Conv2d(width, width, 3, padding=1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Conv1d(2 * width, classes, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.res_a_bn(self.res_a(x)))
        x = F.relu(x + self.res_b_bn(self.res_b(y)))
        x = torch.cat([F.relu(self.branch_1x1(x)), F.relu(self.branch_3x3(x))], dim=1)
        x = self.pool(x).flatten(2)
        return self.head(x).flatten(1)
