"""BlockReconstruction: one unit's rounding and activation steps, learned on its output MSE."""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Iterable

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from ..quant import (
    AdaRounding,
    act_border_parameters,
    act_step_parameters,
    finish_rounding_gradients,
    reconstruction_loss,
    rounding_parameters,
    rounding_regularizer,
    set_learning,
    set_progress,
)
from .cache import UnitData
from .distributed import rank_world
from .graph_step import GraphedStep
from .settings import COMPILE_MODES, LR_SCHEDULES

# Units are reconstructed in eval mode on purpose: the behaviour they will have at inference
# (no dropout); Lightning's warning about it would only confuse.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def use_runtime_cuda_check() -> None:
    """Stop every ``Adam.step`` from probing NVML on a machine without a CUDA device.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (a CUDA availability check that does not
    poison ``fork``); ``torch.optim.Adam.step`` asks ``torch.cuda.is_available()`` on every
    call, and with that variable set a CUDA build of torch without a GPU tries to load the NVML
    library each time: 0.18 ms a step, twice Adam's own work on a unit (measured on the 2-core
    CPU machine). Without a CUDA device there is no CUDA state to protect from ``fork``, so the
    plain runtime check is used there; machines with a GPU are left as Lightning set them.
    """
    if os.environ.get(NVML_CHECK) == "1" and not torch.cuda.is_available():
        del os.environ[NVML_CHECK]


class StepBatches(Dataset):
    """Item ``k``: step ``k``'s (inputs, targets), one gather from the cache. Every step's
    indices are put on the cache's device once, in one tensor: a step then slices it and
    gathers on the device, with no host-to-device copy of indices, which on a GPU would make
    the host wait for the queued kernels every step."""

    def __init__(self, data: UnitData, batches: Iterable[list[int]]) -> None:
        self.data = data
        batches = list(batches)
        self.bounds = [0, *itertools.accumulate(len(b) for b in batches)]
        flat = [i for b in batches for i in b]
        self.index = torch.tensor(flat, dtype=torch.long, device=data.inputs.device)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, step: int) -> tuple[Tensor, Tensor]:
        index = self.index[self.bounds[step] : self.bounds[step + 1]]
        return self.data.inputs[index], self.data.targets[index]


class ShardBatches(Sampler[list[int]]):
    """Global batches of ``batch_size`` drawn with replacement from ``total`` samples, seeded
    (one process draws exactly these); each yields this rank's part as local indices (rank
    ``r`` of ``w`` holds the samples ``i % w == r`` at ``i // w``)."""

    def __init__(self, total: int, iters: int, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1) -> None:  # fmt: skip
        self.total, self.iters, self.batch_size = total, iters, batch_size
        self.seed, self.rank, self.world = seed, rank, world

    def __len__(self) -> int:
        return self.iters

    def __iter__(self):  # noqa: ANN204 - Iterator[list[int]]
        gen = torch.Generator().manual_seed(self.seed)
        draws = RandomSampler(range(self.total), replacement=True,
                              num_samples=self.iters * self.batch_size, generator=gen)  # fmt: skip
        for batch in BatchSampler(draws, self.batch_size, drop_last=True):
            yield [i // self.world for i in batch if i % self.world == self.rank]


class BlockReconstruction(pl.LightningModule):
    """Minimise ``||unit(x_q) - y_float||^2`` (+ the rounding regulariser) for one unit.

    Adam over the unit's rounding parameters (``lr``) and activation step sizes and AQuant
    border parameters (``act_lr``) only; ``iters`` steps of ``batch_size`` samples drawn with
    replacement from the cache, seeded. Under DDP ``data`` is this rank's shard of ``total``
    samples (see ``distributed``); each rank's loss is weighted by its share of the global
    batch, so the averaged gradient is the global batch's. ``lr_schedule='cosine'`` decays both
    learning rates along a half cosine to 0 over ``iters`` steps (not in the paper; an option),
    ``'cosine_act'`` only the activation parameters' (what BRECQ's and QDrop's code do).

    ``compile`` (not 'off'): the unit's forward (and with it, through AOTAutograd, its backward)
    runs through ``torch.compile`` in that mode, compiled afresh for each unit once it is on
    its device; ``'reduce-overhead'`` replays it as CUDA graphs on a GPU. The rounding
    gradient (eq. 6), the regulariser and Adam stay eager. Compiled kernels fuse elementwise
    work, so results agree with eager ones to float rounding, not bit for bit.

    ``cuda_graph``: the whole step (forward, backward, eq. 6, Adam) is recorded once as a CUDA
    graph and replayed (``GraphedStep``; manual optimization). CUDA only, one process, a
    constant learning rate, no AdaRound (its beta changes every step) and no QDrop dropping
    (its generator is not recorded).
    """

    def __init__(
        self, unit: nn.Module, data: UnitData, name: str, iters: int = 2000,
        batch_size: int = 64, lr: float = 4e-4, act_lr: float = 4e-4, seed: int = 0,
        total: int | None = None, lr_schedule: str = "constant", compile: str = "off",
        cuda_graph: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.unit = unit
        self.data = data
        self.total = len(data) if total is None else total
        self.name = name
        self.iters = iters
        self.batch_size = batch_size
        self.lr = lr
        self.act_lr = act_lr
        self.lr_schedule = lr_schedule
        self.seed = seed
        self.label = name
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r}: one of {COMPILE_MODES}")
        self.compile = compile
        self._unit_forward = unit.forward
        self.cuda_graph = cuda_graph
        self._graphed: GraphedStep | None = None
        if cuda_graph:
            check_graphable(unit, lr_schedule, compile)
            self.automatic_optimization = False  # the graph holds backward and Adam's step

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
        rank, world = rank_world()
        batches = ShardBatches(self.total, self.iters, self.batch_size, self.seed, rank, world)
        return DataLoader(StepBatches(self.data, batches), batch_size=None)

    def on_fit_start(self) -> None:
        use_runtime_cuda_check()
        if self.cuda_graph and rank_world()[1] > 1:
            raise RuntimeError("recon.cuda_graph runs in one process only: set it to false for DDP")
        # DDP all-reduces the gradient of every parameter that requires one: only the learned
        # ones may (an A32 layer's unused step would otherwise stall the reduction)
        learned = {id(p) for group in self.learnable() for p in group}
        for p in self.unit.parameters():
            p.requires_grad_(id(p) in learned)
        self._unit_forward = self.unit.forward
        if self.compile != "off":
            if rank_world()[1] > 1:
                raise RuntimeError("recon.compile is not supported with more than one process: "
                                   "set it to 'off' for DDP")  # fmt: skip
            # a fresh compile per unit: no unit's guards or cache entries linger for the next
            torch.compiler.reset()
            self._unit_forward = torch.compile(self.unit.forward, mode=self.compile,
                                               dynamic=False)  # fmt: skip

    def on_train_start(self) -> None:
        set_learning(self.unit, self.batch_size)  # QDrop (if drop_prob > 0) while learning

    def on_train_end(self) -> None:
        set_learning(self.unit, None)
        self._graphed = None  # frees the graph's memory pool
        if self.compile != "off":  # drop the compiled code and its CUDA graphs' memory
            self._unit_forward = self.unit.forward
            torch.compiler.reset()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # after backward and, under DDP, after the ranks' gradients are summed
        finish_rounding_gradients(self.unit)

    def on_train_batch_start(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        set_progress(self.unit, batch_idx / max(1, self.iters))  # = global_step: one epoch

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.cuda_graph:
            return self._graphed_step(x, y, batch_idx)
        _, world = rank_world()
        if len(x):  # weight: this rank's share of the global batch (1 in one process)
            out = self._unit_forward(x)
            rec = reconstruction_loss(out, y) * (len(x) * world / self.batch_size)
        else:  # no sample of this step on this rank: zero gradients, still all-reduced
            rec = sum(p.sum() for group in self.learnable() for p in group) * 0.0
        reg = rounding_regularizer(self.unit)
        self._log_losses(rec, reg, batch_idx, world)
        return rec + reg

    def _graphed_step(self, x: Tensor, y: Tensor, batch_idx: int) -> None:
        if self._graphed is None:
            self._graphed = GraphedStep(self.unit, self.optimizers(use_pl_optimizer=False))
        rec, reg = self._graphed(x, y)
        self._log_losses(rec, reg, batch_idx)

    def _log_losses(self, rec: Tensor, reg: Tensor, batch_idx: int, world: int = 1) -> None:
        """Log the step's loss (and regulariser) on the steps the Trainer's logger writes.

        Every ``log_every_n_steps``, counted by ``batch_idx``: a unit's fit is one epoch, so it
        counts the optimizer's steps, also under manual optimization, where ``global_step`` does
        not move. Only then, since ``self.log`` costs ~1 ms a call."""
        trainer = self._trainer
        if trainer is None or trainer.log_every_n_steps == 0:
            return
        if (batch_idx + 1) % trainer.log_every_n_steps:
            return
        logged = bool(trainer.loggers)  # a run without a folder has no logger
        self.log(f"recon/{self.name}/loss", rec, on_step=True, prog_bar=True, logger=logged,
                 sync_dist=world > 1)  # fmt: skip
        if reg.requires_grad:
            self.log(f"recon/{self.name}/reg", reg, on_step=True, logger=logged)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        rounding, steps = self.learnable()
        groups = [{"params": rounding, "lr": self.lr}, {"params": steps, "lr": self.act_lr}]
        # foreach: one kernel per state update over all tensors instead of a Python loop over
        # them (bit-identical results to the loop; ~1 ms less per step on a ResNet-20 block)
        if self.cuda_graph and self.device.type != "cuda":
            raise RuntimeError(f"recon.cuda_graph needs the unit on a CUDA device; the Trainer "
                               f"put it on {self.device}")  # fmt: skip
        optimizer = torch.optim.Adam([g for g in groups if g["params"]], foreach=True,
                                     capturable=self.cuda_graph)  # fmt: skip
        if self.lr_schedule == "constant":
            return optimizer
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}: one of {LR_SCHEDULES}")
        horizon = max(1, self.iters)

        def cosine(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, horizon) / horizon))

        # groups[0]: rounding (decays with 'cosine'), groups[1]: activations (decay with both)
        factors = [cosine if self.lr_schedule == "cosine" or i == 1 else _constant
                   for i, g in enumerate(groups) if g["params"]]  # fmt: skip
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }


def _constant(step: int) -> float:
    return 1.0


def check_graphable(unit: nn.Module, lr_schedule: str, compile: str) -> None:
    """Refuse what a recorded CUDA graph step would freeze or miss (see BlockReconstruction)."""
    if lr_schedule != "constant":
        raise ValueError(f"cuda_graph needs a constant learning rate, not {lr_schedule!r}")
    if compile != "off":
        raise ValueError("cuda_graph and compile are exclusive: the graph records the eager step")
    for module in unit.modules():
        if isinstance(getattr(module, "rounding", None), AdaRounding):
            raise ValueError("cuda_graph cannot run AdaRound: its beta changes every step")
        if getattr(module, "drop_prob", 0.0) > 0:
            raise ValueError("cuda_graph cannot run QDrop's dropping (drop_prob > 0)")
