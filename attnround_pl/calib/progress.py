"""A rich progress bar that names the unit being reconstructed ('unit i/N <name>') and counts
its reconstruction steps, several of which may make one Lightning batch; a unit the adaptive
budget (``recon.plateau_gain``) stopped ends its bar at the steps it ran, named as a plateau."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

if TYPE_CHECKING:
    from rich.progress import TaskID


class UnitProgressBar(RichProgressBar):
    """``refresh_rate``: redraws per second (rich's setting). The bar is updated once per
    Lightning batch, which carries ``steps_per_batch`` steps of the module (1 without it)."""

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=True)
        self._label = "reconstruction"
        self._steps_per_batch = 1
        self._total_steps: int | None = None

    @property
    def total_train_batches(self) -> int | float:
        batches = super().total_train_batches
        return self._total_steps if self._total_steps is not None else batches

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._label = getattr(pl_module, "label", self._label)
        self._steps_per_batch = getattr(pl_module, "steps_per_batch", 1)
        self._total_steps = getattr(pl_module, "iters", None)
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a unit the adaptive budget stopped: its bar ends full at the steps it ran, and says so
        # (short of its total it would read as a fit cut off)
        bar = self.train_progress_bar_id
        if getattr(pl_module, "stopped_on_plateau", False) and self.progress is not None \
                and bar is not None:
            steps = pl_module.steps_run
            self.progress.update(bar, total=steps, completed=steps, description=(
                f"{self._label} (plateau: {steps:,} of {self._total_steps:,} steps)"))
        super().on_train_epoch_end(trainer, pl_module)

    def _update(self, progress_bar_id: TaskID | None, current: int, visible: bool = True,
                hard: bool = False) -> None:
        if progress_bar_id is not None and progress_bar_id == self.train_progress_bar_id:
            current *= self._steps_per_batch  # batches done -> steps done
            if self._total_steps is not None:
                current = min(current, self._total_steps)
        super()._update(progress_bar_id, current, visible, hard)

    def _get_train_description(self, current_epoch: int) -> str:
        return self._label
