"""One unit of the embedded, trained ResNet-20, quantized and with its cache, for tests."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from attnround_pl.calib import build_unit_data
from attnround_pl.calib.cache import UnitData
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.models import build_model
from attnround_pl.quant import QuantConfig, calibrate_activations, fold_batchnorms, quantize_model


def trained_unit(fmnist_root: Path, config: QuantConfig, unit: str,
                 n: int) -> tuple[nn.Module, UnitData]:
    """ResNet-20's ``unit`` quantized with ``config``, activation steps observed on ``n``
    calibration images, and its cache of those images (inputs, float targets)."""
    dm = FashionMNISTDataModule(root=str(fmnist_root), calib_size=n)
    batches = [x for x, _ in dm.calib_dataloader(batch_size=128)]
    q = quantize_model(build_model("resnet20"), config)  # the embedded, trained checkpoint
    calibrate_activations(q, batches)
    folded = build_model("resnet20")
    fold_batchnorms(folded)
    return q.get_submodule(unit), build_unit_data(q, folded, unit, batches)
