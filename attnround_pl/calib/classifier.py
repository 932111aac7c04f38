"""FloatModel: the float model to quantize, as the CLI's ``--model`` group builds it."""

from __future__ import annotations

import lightning.pytorch as pl
from torch import Tensor, nn

from ..models import ModelLoadError, build_model
from ..models.source import ModelSource, source_of
from ..models.zoo import load_checkpoint


class FloatModel(pl.LightningModule):
    """The float model to quantize: a zoo name or the user's own ``nn.Module``.

    Args:
        arch: a zoo name: resnet20, mobilenetv2 (embedded, Fashion-MNIST), regnet_x_600mf, or
            any torchvision classification or segmentation CNN (``torchvision.models
            .list_models()``: resnet34, efficientnet_b0, deeplabv3_mobilenet_v3_large, ...).
        weights: "DEFAULT" (embedded checkpoint / torchvision's cached pretrained weights),
            a torchvision weights name, or null for random weights. Zoo models only.
        checkpoint: a state dict file (or a Lightning checkpoint); wins over ``weights``.
        num_classes: output classes of a zoo model (default: 10 embedded, 1000 torchvision
            classification, 21 segmentation).
        net: the user's own model instead of ``arch``: any ``nn.Module`` or
            ``LightningModule`` that maps an image batch to a tensor or a dict of tensors. On
            the command line ``--model.net.class_path my_pkg.MyNet --model.net.init_args.width
            32`` (the module is imported from the current folder or PYTHONPATH).

    ``source`` records how to rebuild the architecture (``models.source.ModelSource``): the zoo
    name, or for ``net`` its class path and init args when the CLI built it (set by the CLI),
    else the object's class.
    """

    def __init__(
        self,
        arch: str | None = None,
        weights: str | None = "DEFAULT",
        checkpoint: str | None = None,
        num_classes: int | None = None,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (arch is None) == (net is None):
            raise ModelLoadError(
                "give the model as model.arch (a zoo or torchvision name) or as model.net "
                "(class_path and init_args of your nn.Module), not both and not neither"
            )
        if net is not None:
            if checkpoint is not None:
                load_checkpoint(net, checkpoint, type(net).__name__)
            self.net = net.eval()
            self.source = source_of(net)
        else:
            self.net = build_model(arch, weights, checkpoint, num_classes)
            self.source = ModelSource.zoo(arch, num_classes)
        self.arch = self.source.label
        self.weights = weights
        self.checkpoint = checkpoint

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
