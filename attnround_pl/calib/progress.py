"""A rich progress bar that names the unit being reconstructed: 'unit i/N <name>'."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class UnitProgressBar(RichProgressBar):
    """``refresh_rate``: steps between updates of the bar (each update renders it and reads
    the logged metrics)."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=True)
        self._label = "reconstruction"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._label = getattr(pl_module, "label", self._label)
        super().on_train_epoch_start(trainer, pl_module)

    def _get_train_description(self, current_epoch: int) -> str:
        return self._label
