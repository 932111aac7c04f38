"""LightningModules for evaluation: any classifier's top-1 / top-5 through torchmetrics."""

from __future__ import annotations

import lightning.pytorch as pl
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..models import ModelLoadError, build_model


def num_classes_of(net: nn.Module) -> int:
    """Output width of the last Linear (or the last Conv2d for fully convolutional heads)."""
    for module in reversed(list(net.modules())):
        if isinstance(module, nn.Linear):
            return module.out_features
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    raise ModelLoadError(f"cannot tell the number of classes of {type(net).__name__}")


class ImageClassifier(pl.LightningModule):
    """Wraps a classifier; ``trainer.test`` logs ``top1`` and ``top5`` in percent."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        classes = num_classes_of(net)
        self.top1 = MulticlassAccuracy(classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(classes, top_k=min(5, classes), average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.top1(logits, y)
        self.top5(logits, y)
        self.log("top1", self.top1, on_epoch=True)
        self.log("top5", self.top5, on_epoch=True)


class FloatModel(ImageClassifier):
    """The float model to quantize, built from the zoo (see ``models.build_model``).

    Args:
        arch: resnet20, mobilenetv2 (embedded, Fashion-MNIST) or resnet18, resnet50,
            mobilenet_v2, regnet_x_600mf, mnasnet1_0 (torchvision, ImageNet).
        weights: "DEFAULT" (embedded checkpoint / torchvision's cached ImageNet weights),
            a torchvision weights name, or null for random weights.
        checkpoint: a state dict file; wins over ``weights``.
        num_classes: output classes (default: 10 embedded, 1000 torchvision).
    """

    def __init__(
        self,
        arch: str = "resnet20",
        weights: str | None = "DEFAULT",
        checkpoint: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(build_model(arch, weights, checkpoint, num_classes))
        self.arch = arch
        self.weights = weights
        self.checkpoint = checkpoint
        self.num_classes = num_classes_of(self.net)
