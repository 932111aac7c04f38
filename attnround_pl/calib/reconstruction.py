"""BlockReconstruction: one unit's rounding and activation steps, learned on its output MSE."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Sequence
from functools import partial

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from ..quant import (
    AdaRounding,
    AttentionRounding,
    act_border_parameters,
    act_step_parameters,
    active_roundings,
    rounding_parameters,
    rounding_regularizer,
    set_learning,
    set_progress,
    shape_gradients_before_step,
)
from ..quant.act_quant import drop_references
from ..quant.placement import entry_quantizers
from .budget import Plateau
from .cache import UnitData
from .distributed import rank_world
from .graph_step import GraphedStep
from .output_term import OutputTerm
from .settings import COMPILE_MODES, LR_SCHEDULES
from .step import Losses, optimizer_step, step_losses

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"

# Reconstruction steps per Lightning training batch when the module steps its own optimizer
# (one process, 32-bit precision): the Trainer's per-batch machinery (hooks, fetcher, progress
# tracking; 0.5-0.9 ms on the 2-core CPU machine) then runs once per this many steps.
STEPS_PER_BATCH = 10


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
    """Item ``k``: the sample indices of steps ``k * steps`` to ``(k + 1) * steps - 1`` (a list
    of index tensors, shorter at the end); ``gather`` turns one into the step's (inputs,
    targets[, float inputs, Fisher weights, float logits]) just before the step runs. Every
    step's indices are put on the cache's device once, in one tensor, so a step slices it and
    gathers on the device, with no host-to-device copy of indices (on a GPU that would make
    the host wait for the queued kernels every step).

    Gathering at the step, not when the Lightning batch is fetched, keeps one step's batch in
    memory instead of ``steps`` of them, and lets every step of a size write into the same
    tensors (``gather``): no allocation a step, and the batch is still in the CPU's cache when
    the unit reads it."""

    def __init__(self, data: UnitData, batches: Iterable[list[int]], steps: int = 1) -> None:
        self.data = data
        batches = list(batches)
        self.bounds = [0, *itertools.accumulate(len(b) for b in batches)]
        flat = [i for b in batches for i in b]
        self.index = torch.tensor(flat, dtype=torch.long, device=data.inputs.device)
        self.steps = steps
        self._buffers: dict[int, tuple[Tensor, ...]] = {}  # batch size -> the tensors it fills

    def __len__(self) -> int:
        return math.ceil((len(self.bounds) - 1) / self.steps)

    def __getitem__(self, item: int) -> list[Tensor]:
        first = item * self.steps
        last = min(first + self.steps, len(self.bounds) - 1)
        return [self.index[self.bounds[step] : self.bounds[step + 1]]
                for step in range(first, last)]

    def gather(self, index: Tensor) -> tuple[Tensor, ...]:
        """(inputs, targets, float inputs, Fisher weights, float logits) of the samples
        ``index`` (the last three None where the cache holds none), written into this size's
        tensors of the previous step (a step's graph is freed by then). index_select, not
        ``tensor[index]``: advanced indexing takes a slower general path (0.6 ms against
        0.09 ms for a step's batch of ResNet-20's layer1 on the 2-core CPU)."""
        held = (self.data.inputs, self.data.targets, self.data.float_inputs, self.data.fisher,
                self.data.logits)
        tensors = [t for t in held if t is not None]
        size = len(index)
        out = self._buffers.get(size)
        if out is None:
            out = tuple(t.new_empty((size, *t.shape[1:])) for t in tensors)
            self._buffers[size] = out
        for source, target in zip(tensors, out, strict=True):
            torch.index_select(source, 0, index, out=target)
        filled = iter(out)
        return tuple(None if t is None else next(filled) for t in held)


class ShardBatches(Sampler[list[int]]):
    """Global batches of ``batch_size`` drawn with replacement from ``total`` samples, seeded
    (one process draws exactly these); each yields this rank's part as local indices (rank
    ``r`` of ``w`` holds the samples ``i % w == r`` at ``i // w``)."""

    def __init__(self, total: int, iters: int, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1) -> None:
        self.total, self.iters, self.batch_size = total, iters, batch_size
        self.seed, self.rank, self.world = seed, rank, world

    def __len__(self) -> int:
        return self.iters

    def __iter__(self):  # Iterator[list[int]]
        gen = torch.Generator().manual_seed(self.seed)
        draws = RandomSampler(range(self.total), replacement=True,
                              num_samples=self.iters * self.batch_size, generator=gen)
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

    Manual optimization: the module steps Adam itself, whose pre-hook applies eq. 6 to the
    rounding gradients (``quant.shape_gradients_before_step``). In one process at 32-bit
    precision each Lightning batch carries ``STEPS_PER_BATCH`` steps, run by
    ``calib.step.optimizer_step`` (the code the CUDA graph records and the speed benchmark's
    bare loop runs); under DDP or another precision, one step a batch through Lightning's
    ``manual_backward`` and optimizer wrapper (gradient all-reduce, loss scaling). The
    results are the same step for step (``tests/calib/test_reconstruction.py``).

    ``compile`` (not 'off'): the unit's forward (and with it, through AOTAutograd, its backward)
    runs through ``torch.compile`` in that mode, compiled afresh for each unit once it is on
    its device; ``'reduce-overhead'`` replays it as CUDA graphs on a GPU. The rounding
    gradient (eq. 6), the regulariser and Adam stay eager. Compiled kernels fuse elementwise
    work, so results agree with eager ones to float rounding, not bit for bit.

    ``loss_p``: the exponent of the output error (2: the squared error; BRECQ's activation
    stage runs 2.4, see ``quant.reconstruction_loss``).

    ``fixed_steps``: activation quantizers inside the unit whose steps it does not learn (a
    block's input quantizer that the unit before it learned, ``recon.block_output_steps``).

    ``plateau``: the adaptive budget (``calib.budget``): ``iters`` is then the most steps the
    unit may run, and the fit ends at the first window whose loss did not fall enough.

    ``log_every_n_steps``: steps between logged losses (the module logs them itself, at their
    step's number; the Trainer's own setting counts Lightning batches and is not used).

    ``cuda_graph``: the whole step (forward, backward, eq. 6, Adam) is recorded once as a CUDA
    graph and replayed (``GraphedStep``). CUDA only, one process, a constant learning rate, no
    AdaRound (its beta changes every step) and no QDrop dropping (its generator is not
    recorded).

    ``output_term``: PD-Quant's term on the network's output (``calib.output_term``), added
    to the output error; the cache then holds the float logits (``data.logits``). The term's
    float tail must be on the unit's device.
    """

    def __init__(
        self, unit: nn.Module, data: UnitData, name: str, iters: int = 2000,
        batch_size: int = 64, lr: float = 1e-3, act_lr: float = 4e-4, seed: int = 0,
        total: int | None = None, lr_schedule: str = "constant", compile: str = "off",
        cuda_graph: bool = False, log_every_n_steps: int = 50, loss_p: float = 2.0,
        fixed_steps: Sequence[nn.Module] = (), plateau: Plateau | None = None,
        output_term: OutputTerm | None = None,
    ) -> None:
        super().__init__()
        if output_term is not None and data.logits is None:
            raise ValueError("output_term needs the float logits in the cache (data.logits)")
        self.output_term = output_term  # not a submodule: its tail stays in eval mode
        self.plateau = plateau
        self.steps_run = 0  # steps taken so far (fewer than iters where plateau ended the fit)
        self._stopped = False
        # activation quantizers inside the unit that another unit learns (recon.
        # block_output_steps: a block's input quantizer, learned with the unit before it)
        self._fixed = {id(q) for q in fixed_steps}
        self.loss_p = loss_p
        self.log_every_n_steps = log_every_n_steps
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
        self._roundings = active_roundings(unit)
        # QDrop's input mixing: the quantizers a dropped input element takes the float value at
        self._entries = ([] if data.float_inputs is None else
                         entry_quantizers(unit, data.inputs[:1].to(data.inputs.device)))
        self.steps_per_batch = 1  # set with the fit's data (see own_steps)
        self._steps: StepBatches | None = None  # ditto: the fit's step batches
        self._plain_steps = False  # ditto: whether the steps use the plain optimizer
        if cuda_graph:
            check_graphable(unit, lr_schedule, compile, fisher=data.fisher is not None,
                            output=output_term is not None)
        self.automatic_optimization = False  # the module steps Adam itself

    def learnable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(rounding parameters, activation parameters: step sizes and AQuant borders)."""
        fixed = {id(p) for q in self.unit.modules() if id(q) in self._fixed
                 for p in q.parameters()}
        activation = [p for p in act_step_parameters(self.unit) + act_border_parameters(self.unit)
                      if id(p) not in fixed]
        return rounding_parameters(self.unit), activation

    def has_learnable(self) -> bool:
        rounding, steps = self.learnable()
        return bool(rounding or steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.unit(x)

    def own_steps(self) -> bool:
        """Whether this fit runs its steps with the plain optimizer, several a Lightning batch:
        one process and 32-bit precision, where Lightning's wrapper adds nothing but time."""
        trainer = self._trainer
        plain = trainer is None or type(trainer.precision_plugin) is Precision
        return plain and rank_world()[1] == 1

    def train_dataloader(self) -> DataLoader:
        rank, world = rank_world()
        batches = ShardBatches(self.total, self.iters, self.batch_size, self.seed, rank, world)
        self._plain_steps = self.own_steps()  # decided once a fit, not every step
        self.steps_per_batch = STEPS_PER_BATCH if self._plain_steps else 1
        self._steps = StepBatches(self.data, batches, self.steps_per_batch)
        return DataLoader(self._steps, batch_size=None)

    def on_fit_start(self) -> None:
        use_runtime_cuda_check()
        if self.cuda_graph and rank_world()[1] > 1:
            raise RuntimeError("recon.cuda_graph runs in one process only: set it to false for DDP")
        # DDP all-reduces the gradient of every parameter that requires one: only the learned
        # ones may (an A32 layer's unused step would otherwise stall the reduction)
        learned = {id(p) for group in self.learnable() for p in group}
        for p in self.unit.parameters():
            p.requires_grad_(id(p) in learned)
        self._roundings = active_roundings(self.unit)
        self._unit_forward = self.unit.forward
        if self.compile != "off":
            if rank_world()[1] > 1:
                raise RuntimeError("recon.compile is not supported with more than one process: "
                                   "set it to 'off' for DDP")
            # a fresh compile per unit: no unit's guards or cache entries linger for the next
            torch.compiler.reset()
            self._unit_forward = torch.compile(self.unit.forward, mode=self.compile,
                                               dynamic=False)

    def on_train_start(self) -> None:
        set_learning(self.unit, self.batch_size)  # QDrop (if drop_prob > 0) while learning

    def on_train_end(self) -> None:
        set_learning(self.unit, None)
        self._steps = None  # frees the step batches' tensors
        self._graphed = None  # frees the graph's memory pool
        if self.compile != "off":  # drop the compiled code and its CUDA graphs' memory
            self._unit_forward = self.unit.forward
            torch.compiler.reset()

    def step_losses(self, x: Tensor, y: Tensor, x_float: Tensor | None = None,
                    fisher: Tensor | None = None, logits: Tensor | None = None) -> Losses:
        """One step's (reconstruction loss, regulariser) on this rank's part of the batch,
        weighted by its share of the global batch (1 in one process); ``x_float``: the float
        model's inputs of the batch, what dropped input elements take (QDrop's mixing);
        ``fisher``: the output error's element weights (``recon.loss fisher``); ``logits``:
        the float network's output on the batch (``output_term``)."""
        _, world = rank_world()
        if len(x):
            with drop_references(self._entries, x_float):
                return step_losses(self._unit_forward, self._roundings, x, y,
                                   len(x) * world / self.batch_size, self.loss_p, fisher,
                                   self.output_term, logits)
        # no sample of this step on this rank: zero gradients, still all-reduced
        zero = sum(p.sum() for group in self.learnable() for p in group) * 0.0
        return zero, rounding_regularizer(self._roundings)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        first = batch_idx * self.steps_per_batch
        device = self.device
        for offset, index in enumerate(batch):
            if self._stopped:  # the adaptive budget ended the fit within this batch
                break
            # to the unit's device: a no-op unless the cache is on the host and the unit not
            x, y, x_float, fisher, logits = (None if t is None else t.to(device)
                                             for t in self._steps.gather(index))
            self.reconstruction_step(x, y, first + offset, x_float, fisher, logits)

    @property
    def stopped_on_plateau(self) -> bool:
        """Whether the adaptive budget (``plateau``) ended the fit before ``iters`` steps."""
        return self._stopped

    def transfer_batch_to_device(self, batch: list[Tensor], device: torch.device,
                                 dataloader_idx: int) -> list[Tensor]:
        """A batch is the steps' sample indices: they stay on the cache's device (where
        ``StepBatches.gather`` reads), and the gathered batch goes to the unit's."""
        return batch

    def reconstruction_step(self, x: Tensor, y: Tensor, step: int,
                            x_float: Tensor | None = None, fisher: Tensor | None = None,
                            logits: Tensor | None = None) -> Losses:
        """Step ``step`` (0-based) of the fit on the batch ``(x, y)`` (``x_float``, ``fisher``,
        ``logits``: see ``step_losses``): eq. 6 and Adam's update included, the schedule
        advanced, the losses logged when due."""
        set_progress(self._roundings, step / max(1, self.iters))
        if self.cuda_graph:
            if self._graphed is None:
                self._graphed = GraphedStep(self.unit, self.optimizers(use_pl_optimizer=False),
                                            self.loss_p)
            rec, reg = self._graphed(x, y)
        elif self._plain_steps:
            rec, reg = optimizer_step(partial(self.step_losses, x_float=x_float, fisher=fisher,
                                              logits=logits),
                                      self.optimizers(use_pl_optimizer=False), x, y)
        else:  # Lightning's wrapper: DDP's gradient all-reduce, a precision plugin's scaling
            optimizer = self.optimizers()
            optimizer.zero_grad()
            rec, reg = self.step_losses(x, y, x_float, fisher, logits)
            self.manual_backward(rec + reg)
            optimizer.step()
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()
        self._log_losses(rec, reg, step)
        self.steps_run = step + 1
        if self.plateau is not None and self.plateau.add(rec):
            self._stopped = True
            if self._trainer is not None:
                self._trainer.should_stop = True  # after this Lightning batch
        return rec, reg

    def _log_losses(self, rec: Tensor, reg: Tensor, step: int) -> None:
        """Log the step's loss (and regulariser) every ``log_every_n_steps`` steps (0: never):
        to the progress bar and, at this step's number, to the Trainer's loggers. Only then,
        since a logged value waits for the step's kernels and ``self.log`` costs ~1 ms."""
        trainer = self._trainer
        every = self.log_every_n_steps
        if trainer is None or every == 0 or (step + 1) % every:
            return
        values = {f"recon/{self.name}/loss": rec.detach()}
        if reg.requires_grad:
            values[f"recon/{self.name}/reg"] = reg.detach()
        values = {k: trainer.strategy.reduce(v, reduce_op="mean") for k, v in values.items()}
        self.log(f"recon/{self.name}/loss", values[f"recon/{self.name}/loss"], on_step=True,
                 prog_bar=True, logger=False)
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        rounding, steps = self.learnable()
        groups = [{"params": rounding, "lr": self.lr}, {"params": steps, "lr": self.act_lr}]
        if self.cuda_graph and self.device.type != "cuda":
            raise RuntimeError(f"recon.cuda_graph needs the unit on a CUDA device; the Trainer "
                               f"put it on {self.device}")
        optimizer = torch.optim.Adam([g for g in groups if g["params"]], **adam_options(
            self.device, self.cuda_graph))
        shape_gradients_before_step(optimizer, self.unit)
        if self.lr_schedule == "constant":
            return optimizer
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}: one of {LR_SCHEDULES}")
        horizon = max(1, self.iters)

        def cosine(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, horizon) / horizon))

        # groups[0]: rounding (decays with 'cosine'), groups[1]: activations (decay with both)
        factors = [cosine if self.lr_schedule == "cosine" or i == 1 else _constant
                   for i, g in enumerate(groups) if g["params"]]
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }


def adam_options(device: torch.device, capturable: bool = False) -> dict[str, bool]:
    """Adam's implementation: ``fused`` (one kernel a tensor for the whole update) on the
    CPU, ``foreach`` (one kernel per update over all tensors) elsewhere, ``capturable`` for a
    CUDA graph. Fused and foreach agree to float rounding (``tests/calib/test_reconstruction.py``);
    on the 2-core CPU machine fused takes about half foreach's time on a ResNet-20 unit."""
    if device.type == "cpu" and not capturable:
        return {"fused": True}
    return {"foreach": True, "capturable": capturable}


def _constant(step: int) -> float:
    return 1.0


def check_graphable(unit: nn.Module, lr_schedule: str, compile: str,
                    fisher: bool = False, output: bool = False) -> None:
    """Refuse what a recorded CUDA graph step would freeze or miss (see BlockReconstruction);
    ``fisher``: the unit's loss weighs its output error (``recon.loss`` fisher); ``output``:
    it has PD-Quant's term on the network's output (``recon.output_weight``)."""
    if lr_schedule != "constant":
        raise ValueError(f"cuda_graph needs a constant learning rate, not {lr_schedule!r}")
    if compile != "off":
        raise ValueError("cuda_graph and compile are exclusive: the graph records the eager step")
    if fisher:
        raise ValueError("cuda_graph records the plain squared error: not with recon.loss fisher")
    if output:
        raise ValueError("cuda_graph records the output error alone: not with "
                         "recon.output_weight")
    for module in unit.modules():
        rounding = getattr(module, "rounding", None)
        if isinstance(rounding, AdaRounding):
            raise ValueError("cuda_graph cannot run AdaRound: its beta changes every step")
        if isinstance(rounding, AttentionRounding) and rounding.tau_end is not None:
            raise ValueError("cuda_graph cannot run rounding_args.tau_end: eq. 6's width "
                             "changes every step")
        if getattr(module, "drop_prob", 0.0) > 0:
            raise ValueError("cuda_graph cannot run QDrop's dropping (drop_prob > 0)")
