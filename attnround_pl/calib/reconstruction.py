"""BlockReconstruction: one unit's rounding and activation steps, learned on its output MSE."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from ..quant import (
    act_border_parameters,
    act_step_parameters,
    reconstruction_loss,
    rounding_parameters,
    rounding_regularizer,
    set_dropping,
    set_progress,
)
from .cache import UnitData

# Units are reconstructed in eval mode on purpose: the behaviour they will have at inference
# (no dropout); Lightning's warning about it would only confuse.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


class _PairBatches(Dataset):
    """Indexable by a list of indices: one gather per batch instead of one item at a time."""

    def __init__(self, data: UnitData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(idx, device=self.data.inputs.device)
        return self.data.inputs[index], self.data.targets[index]


class BlockReconstruction(pl.LightningModule):
    """Minimise ``||unit(x_q) - y_float||^2`` (+ the rounding regulariser) for one unit.

    Adam over the unit's rounding parameters (``lr``) and activation step sizes and AQuant
    border parameters (``act_lr``) only; ``iters`` steps of ``batch_size`` samples drawn with
    replacement from the cache, seeded.
    """

    def __init__(
        self, unit: nn.Module, data: UnitData, name: str, iters: int = 2000,
        batch_size: int = 64, lr: float = 4e-4, act_lr: float = 4e-4, seed: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.unit = unit
        self.data = data
        self.name = name
        self.iters = iters
        self.batch_size = batch_size
        self.lr = lr
        self.act_lr = act_lr
        self.seed = seed
        self.label = name

    def learnable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(rounding parameters, activation parameters: step sizes and AQuant borders)."""
        activation = act_step_parameters(self.unit) + act_border_parameters(self.unit)
        return rounding_parameters(self.unit), activation

    def has_learnable(self) -> bool:
        rounding, steps = self.learnable()
        return bool(rounding or steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.unit(x)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        sampler = RandomSampler(
            range(len(self.data)), replacement=True,
            num_samples=self.iters * self.batch_size, generator=gen,
        )  # fmt: skip
        batches = BatchSampler(sampler, self.batch_size, drop_last=True)
        return DataLoader(_PairBatches(self.data), sampler=batches, batch_size=None)

    def on_train_start(self) -> None:
        set_dropping(self.unit, True)  # QDrop (when drop_prob > 0): during learning only

    def on_train_end(self) -> None:
        set_dropping(self.unit, False)

    def on_train_batch_start(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        set_progress(self.unit, self.global_step / max(1, self.iters))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        rec = reconstruction_loss(self.unit(x), y)
        reg = rounding_regularizer(self.unit)
        self.log(f"recon/{self.name}/loss", rec, on_step=True, prog_bar=True, logger=True)
        if reg.requires_grad:
            self.log(f"recon/{self.name}/reg", reg, on_step=True, logger=True)
        return rec + reg

    def configure_optimizers(self) -> torch.optim.Optimizer:
        rounding, steps = self.learnable()
        groups = [{"params": rounding, "lr": self.lr}, {"params": steps, "lr": self.act_lr}]
        return torch.optim.Adam([g for g in groups if g["params"]])
