"""BlockSequencer: reconstruct the units one after the other, in forward order."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from ..models import Unit
from ..quant import (
    activations_off,
    as_frozen,
    freeze_model,
    output_mse,
    quant_layers,
    round_to_nearest,
)
from ..quant.act_quant import ActQuantizer
from ..quant.placement import WithOutputQuantizer, output_quantizers
from .best_state import BestState
from .budget import Plateau, unit_budget, window_steps
from .cache import UnitData, build_unit_data, cache_device, capture
from .distributed import agree, reduce_sums
from .fisher import fisher_weights, output_gradients
from .memory import (
    CacheMemoryError,
    available_bytes,
    check_unit_fits,
    estimate_cache_bytes,
    estimate_step_bytes,
)
from .output_term import OutputTerm, tail_graphs, tail_module
from .reconstruction import BlockReconstruction
from .report import UnitResult
from .settings import ReconConfig


@torch.no_grad()
def unit_mse(unit: nn.Module, data: UnitData, batch_size: int = 256) -> float:
    """Mean squared error of the unit's output against its float targets over the cache
    (over every rank's shard under DDP). Batches go to the unit's device: the cache may stay
    on the host while the unit is on the GPU (``cache_device='cpu'``, or too big for it)."""
    device = next(unit.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.inputs[start : start + batch_size].to(device)
        y = data.targets[start : start + batch_size].to(device)
        total += output_mse(unit(x), y).item() * y.numel()
        count += y.numel()
    total, count = reduce_sums([total, float(count)])
    return total / count


TrainerFactory = Callable[[Callback], pl.Trainer]
# what a pass over the units learns: both the rounding and the activation steps (one pass), or
# one of BRECQ's two stages (recon.act_stage_iters): the rounding with the activations float,
# then the activation steps with the rounding fixed
STAGES = ("joint", "rounding", "activations")


class BlockSequencer(Callback):
    """Drives the units in order: caches each unit's data, hands it to a BlockReconstruction,
    fits it, freezes the unit's rounding to integers and logs its MSE before and after.

    ``make_trainer(self)`` returns a fresh Trainer (with this callback attached) for each unit.
    The MSE 'before' is the unit with round-to-nearest weights and the initial activation
    steps; 'after' is the frozen unit.

    ``stage`` (``STAGES``): 'joint' learns what the unit has; 'rounding' runs the whole pass
    with every activation quantizer off (caches too), so only the rounding learns;
    'activations' is the pass after it: the rounding is frozen, the steps learn for
    ``recon.act_stage_iters`` iterations on the error to the power ``recon.act_stage_loss_p``,
    and 'before' is the fixed rounding with the initial steps (keep_better restores those
    steps, never other codes). With ``recon.act_stage_float_inputs`` that pass caches each
    unit's inputs from the float model, and the unit's fixed entry quantizers (learned with
    the unit before) are off from its first MSE to its last.

    ``recon.output_weight`` > 0: every unit's float tail (the float network after it) is built
    when the sequencer is (a unit whose output is not the way to the network's output is
    refused then, before any work), and the float logits once, with the first unit's cache.
    """

    def __init__(
        self, qmodel: nn.Module, float_model: nn.Module, units: list[Unit],
        batches: list[Tensor], recon: ReconConfig, make_trainer: TrainerFactory,
        seed: int = 0, logger: Any = None, echo: Callable[[str], None] | None = None,
        on_unit_done: Callable[[list[UnitResult]], None] | None = None,
        resume_hint: str = "", total: int | None = None, stage: str = "joint",
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}: one of {STAGES}")
        self.stage = stage
        self.qmodel = qmodel
        self.float_model = float_model
        self.units = units
        self.batches = batches
        self.recon = recon.validate()
        self._steps_pass = stage == "activations"  # BRECQ's second pass
        self.iters = recon.act_stage_iters if self._steps_pass else recon.iters
        self.unit_iters = self.iters  # the most steps the unit now learning may run
        # TensorBoard tags of the steps' pass: apart from the rounding pass's of the same unit
        self._tag_suffix = "@steps" if self._steps_pass else ""
        self.loss_p = recon.act_stage_loss_p if self._steps_pass else 2.0
        self.make_trainer = make_trainer
        self.seed = seed
        self.logger = logger
        self.echo = echo or (lambda line: None)
        self.on_unit_done = on_unit_done
        self.resume_hint = resume_hint
        self.total = total if total is not None else sum(len(b) for b in batches)
        self.results: list[UnitResult] = []
        self._current: UnitResult | None = None
        self._started = 0.0
        self._data: UnitData | None = None
        self._device = torch.device("cpu")
        self._layers = quant_layers(qmodel)
        # QDrop's unit-input mixing (quant.drop.float_inputs): the float inputs are cached too
        self.float_inputs = bool(getattr(qmodel, "drop_float_inputs", False))
        self._initial: dict[str, dict[str, Any]] = {}
        self._best: BestState | None = None  # recon.keep_best_every's checkpoints
        self._exit_initial: dict[str, Any] | None = None  # ditto, a learned output quantizer
        # BRECQ's activation stage (recon.act_stage_float_inputs): float unit inputs, and the
        # quantizers off that would quantize them inside the unit, while it learns
        self._inputs_from_float = self._steps_pass and recon.act_stage_float_inputs
        self._entry_off: list[ActQuantizer] = []
        self._bytes: dict[str, tuple[int, int]] = {}  # unit -> (cache, step) bytes
        # PD-Quant's term on the network's output: each unit's float tail, the float logits
        self._tails = tail_graphs(float_model, units) if recon.output_weight > 0 else None
        self._logits: Tensor | None = None
        # recon.block_output_steps: the block input quantizer each unit learns (None: none)
        self._outputs: list[ActQuantizer | None] = [None] * len(units)
        if recon.block_output_steps:
            self._outputs = output_quantizers(
                qmodel, [None if u.region is not None else u.submodules(qmodel)[-1]
                         for u in units],
                batches[0][:2])
            if not self._steps_pass:
                self.echo(f"recon.block_output_steps: {sum(q is not None for q in self._outputs)}"
                          f" of {len(units)} units learn the quantizer of their output")

    def run(self, done: list[UnitResult] | None = None) -> list[UnitResult]:
        """Reconstruct every unit after the ``done`` ones (their results, from a resumed run);
        ``on_unit_done(results)`` is called after each unit is frozen.

        Devices: each unit's Trainer names the device (``root_device``: this rank's GPU, or the
        CPU). For the unit's cache capture, fit and MSEs both models are on that device; between
        units they are on the host (``on_unit_done`` saves them from there). With
        ``cache_device='auto'`` the cache is captured straight onto that device when its peak
        takes at most half the device's free memory."""
        self.results = list(done or [])
        if self.stage == "rounding":
            with activations_off(self.qmodel):
                self._run_units()
        else:
            self._run_units()
        return self.results

    def _run_units(self) -> None:
        offset = len(self.units) if self._steps_pass else 0  # seeds of its own
        for index, unit in enumerate(self.units):
            if index < len(self.results):
                continue
            started = time.perf_counter()
            needed, step = self.unit_bytes(unit)
            try:
                check_unit_fits(unit.name, needed, step, available_bytes(), self.resume_hint)
            except CacheMemoryError as exc:
                agree(exc)  # every rank stops
            agree(None)
            adaptive = self.recon.plateau_gain > 0
            self.unit_iters = unit_budget(self.iters, self.results) if adaptive else self.iters
            trainer = self.make_trainer(self)
            self._device = trainer.strategy.root_device
            where = (
                cache_device(needed, self._device) if self.recon.cache_device == "auto" else "cpu"
            )
            self.qmodel.to(self._device)
            self.float_model.to(self._device)
            self._data = build_unit_data(self.qmodel, self.float_model, unit, self.batches, where,
                                         self.float_inputs, self._inputs_from_float)
            if self.recon.loss != "mse":  # BRECQ's Fisher weights
                grads = output_gradients(self.qmodel, self.float_model, self.units, index,
                                         self.batches, self.recon.batch_size, where)
                self._data.fisher = fisher_weights(grads, self.recon.loss)
            output_term = None
            if self._tails is not None:
                if self._logits is None:
                    self._logits = capture(self.float_model, "", self.batches, "output")
                self._data.logits = self._logits.to(where)
                output_term = OutputTerm(tail_module(self.float_model, self._tails[index]),
                                         self.recon.output_weight, self.recon.output_temperature)
            exit_quantizer = self._outputs[index]
            learned = unit.module(self.qmodel)
            if exit_quantizer is not None:
                learned = WithOutputQuantizer(learned, exit_quantizer)
            fixed = [q for i, q in enumerate(self._outputs) if q is not None and i != index]
            if self._inputs_from_float:
                inside = {id(m) for m in learned.modules()}
                self._entry_off = [q for q in fixed if id(q) in inside and q.enabled]
                for q in self._entry_off:
                    q.enabled = False
            module = BlockReconstruction(
                learned, self._data, unit.name + self._tag_suffix,
                iters=self.unit_iters, batch_size=self.recon.batch_size, lr=self.recon.lr,
                act_lr=self.recon.act_lr, seed=self.seed * 1_000_003 + offset + index,
                total=self.total, lr_schedule=self.recon.lr_schedule, compile=self.recon.compile,
                cuda_graph=self.recon.cuda_graph,
                log_every_n_steps=min(self.recon.log_every_n_steps, self.iters),
                loss_p=self.loss_p,
                fixed_steps=fixed,
                plateau=(Plateau(window_steps(self.iters), self.recon.plateau_gain)
                         if adaptive else None),
                output_term=output_term,
            )
            steps = " steps" if self._steps_pass else ""
            module.label = f"unit {index + 1}/{len(self.units)}{steps} {unit.name}"
            with round_to_nearest(module.unit):
                mse_nearest = unit_mse(module.unit, self._data)
            self._initial = {  # the activation side round-to-nearest was measured with
                name: copy.deepcopy(self._layers[name].input_quantizer.state_dict())
                for name in unit.layers
            }
            self._exit_initial = (None if exit_quantizer is None else
                                  copy.deepcopy(exit_quantizer.state_dict()))
            self._started = started
            self._current = UnitResult(
                name=unit.name,
                kind=unit.kind,
                rule=unit.rule,
                layers=list(unit.layers),
                cache_mb=round(self._data.nbytes / 2**20, 3),
                cache_device=where,
                mse_nearest=mse_nearest,
                learned=module.has_learnable() and self.iters > 0,
                stage=self.stage,
            )
            self._best = None
            if self._current.learned and self.recon.keep_best_every > 0:
                self._best = BestState([p for group in module.learnable() for p in group],
                                       self.recon.keep_best_every)
            if self._current.learned:
                trainer.fit(module)
            else:
                self._finish(module)

    def preflight(self, done: list[UnitResult] | None = None) -> None:
        """Refuse, before any work, a run where some unit after the ``done`` ones would not
        fit in the memory available now (its cache and a training step)."""
        available, error = available_bytes(), None
        for unit in self.units[len(done or []) :]:
            try:
                check_unit_fits(unit.name, *self.unit_bytes(unit), available, "")
            except CacheMemoryError as exc:
                error = exc
                break
        agree(error)  # every rank stops if one would not fit

    def unit_bytes(self, unit: Unit) -> tuple[int, int]:
        """Peak bytes of ``unit``'s cache and of one of its training steps (0 without
        learning; see ``memory``). They depend on shapes only: estimated once per unit, for
        ``preflight`` and again for the check before the unit starts."""
        if unit.name not in self._bytes:
            cache = estimate_cache_bytes(self.qmodel, self.float_model, unit, self.batches,
                                         self.float_inputs, self.recon.loss != "mse")
            step = 0
            if self.iters > 0:
                probe = build_unit_data(self.qmodel, self.float_model, unit, [self.batches[0][:2]])
                module = unit.module(self.qmodel)
                step = estimate_step_bytes(module, probe.inputs, self.recon.batch_size)
                if self._tails is not None:  # the float tail's forward and backward too
                    tail = tail_module(self.float_model, self._tails[self.units.index(unit)])
                    step += estimate_step_bytes(tail, probe.targets.requires_grad_(),
                                                self.recon.batch_size)
            self._bytes[unit.name] = (cache, step)
        return self._bytes[unit.name]

    # Callback hooks ---------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: list, batch_idx: int) -> None:
        """``recon.keep_best_every``: measure and offer the state at each checkpoint (the last
        step's is offered in ``_finish``). A Lightning batch carries ``len(batch)`` steps."""
        best = self._best
        if best is None:
            return
        done = batch_idx * pl_module.steps_per_batch + len(batch)
        if done < pl_module.iters and best.due(done, len(batch)):
            self._offer(pl_module, done)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(pl_module)

    # ------------------------------------------------------------------------------------
    def _offer(self, module: BlockReconstruction, step: int) -> None:
        """Offer the unit's state after ``step`` steps to ``self._best``, measured as it would
        freeze; logged to TensorBoard as ``recon/<unit>/mse_checkpoint``."""
        unit = module.unit
        training = unit.training
        unit.eval()
        with as_frozen(unit):
            mse = unit_mse(unit, self._data)
        unit.train(training)
        self._best.offer(mse, step)
        if self.logger is not None:
            self.logger.experiment.add_scalar(f"recon/{module.name}/mse_checkpoint", mse, step)

    def _finish(self, module: BlockReconstruction) -> None:
        module.unit.eval()
        if self._best is not None:
            self._offer(module, module.steps_run)
            self._current.best_step = self._best.restore()
            self._best = None
        freeze_model(module.unit)
        module.unit.to(self._device)  # the Trainer's teardown returned it to the host
        result = self._current
        result.mse_final = unit_mse(module.unit, self._data)
        result.kept = "learned" if result.learned else "as built"
        if result.learned and self.recon.keep_better and result.mse_final > result.mse_nearest:
            self._keep_nearest(result.layers)
            if self._exit_initial is not None:
                module.unit.output_quantizer.load_state_dict(self._exit_initial)
            result.mse_learned = result.mse_final
            result.mse_final = unit_mse(module.unit, self._data)
            result.kept = "nearest"
        for q in self._entry_off:
            q.enabled = True
        self._entry_off = []
        self.qmodel.cpu()
        self.float_model.cpu()
        result.seconds = round(time.perf_counter() - self._started, 3)
        result.iters = module.steps_run if result.learned else 0
        self.results.append(result)
        if self.on_unit_done is not None:
            self.on_unit_done(self.results)
        if self.logger is not None:
            exp = self.logger.experiment
            name = result.name + self._tag_suffix
            by_unit = "recon/steps_" if self._steps_pass else "recon/"
            exp.add_scalar(f"recon/{name}/mse_nearest", result.mse_nearest, 0)
            exp.add_scalar(f"recon/{name}/mse_final", result.mse_final, 0)
            exp.add_scalar(f"{by_unit}mse_final_by_unit", result.mse_final, len(self.results))
            exp.add_scalar(f"{by_unit}mse_nearest_by_unit", result.mse_nearest,
                           len(self.results))
        self.echo(unit_line(len(self.results), len(self.units), result,
                            steps=self.recon.plateau_gain > 0))
        self._data = None

    def _keep_nearest(self, layers: list[str]) -> None:
        """Round-to-nearest codes and the initial activation steps for ``layers`` (only the
        steps in the 'activations' stage: the codes are the first stage's)."""
        for name in layers:
            layer = self._layers[name]
            if not self._steps_pass:
                layer.freeze_nearest()
            layer.input_quantizer.load_state_dict(self._initial[name])


LINE_WIDTH = 79  # one line per unit on an 80-column terminal


def unit_line(index: int, total: int, result: UnitResult, width: int = LINE_WIDTH,
              steps: bool = False) -> str:
    """'unit 3/11 layer1.1: MSE nearest 1.234e-03 -> 5.678e-04, 2.1 s' (or '... MSE nearest
    1.234e-03 kept (learned 2.345e-03), ...'; 'unit 3/11 steps layer1.1: MSE before ...' in
    the activation stage; '..., 1500 steps, 2.1 s' with ``steps``, for the adaptive budget)
    within ``width`` characters: a long unit name is shortened in the middle."""
    before = "before" if result.stage == "activations" else "nearest"
    if result.kept == "nearest":
        tail = f"MSE {before} {result.mse_nearest:.3e} kept (learned {result.mse_learned:.3e})"
    else:
        tail = f"MSE {before} {result.mse_nearest:.3e} -> {result.mse_final:.3e}"
    if steps:
        tail += f", {result.iters} steps"
    tail += f", {result.seconds:.1f} s"
    head = f"unit {index}/{total} " + ("steps " if result.stage == "activations" else "")
    room = max(8, width - len(head) - len(tail) - 2)
    name = result.name
    if len(name) > room:
        keep = room - 1
        name = name[: keep // 2] + "~" + name[len(name) - (keep - keep // 2) :]
    return f"{head}{name}: {tail}"
