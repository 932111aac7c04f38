"""The calibration's own settings: ``ReconConfig`` (block reconstruction) and ``RunConfig``
(the run folder, evaluation, export), with their checks.

Plain dataclasses that import nothing heavy: the command line validates them before Lightning
is loaded, so a refused setting answers in about the time torch takes to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SettingError, check_finite

LR_SCHEDULES = ("constant", "cosine", "cosine_act")
LOSSES = ("mse", "fisher", "fisher_damped")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# export format -> the file it writes in the run folder
FORMATS = {"onnx": "quantized.onnx", "state": "quantized_state.safetensors"}
ONNX_OPSETS = range(18, 22)  # what export.qdq_onnx writes (its OPSETS)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise SettingError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    return fmt


@dataclass
class ReconConfig:
    """Block reconstruction settings.

    Args:
        iters: optimisation steps per unit; 0 = no reconstruction (the rounding function's
            codes and the MSE-initialised activation steps as they are: the floor, ceil,
            stochastic and round-to-nearest baselines).
        batch_size: samples per step, drawn with replacement from the unit's cache.
        lr: Adam learning rate of the rounding parameters (1e-3, the ``attnround`` recipe's;
            the paper's 4e-4 is ``configs/recipes/attention.yaml``).
        act_lr: Adam learning rate of the activation step sizes.
        lr_schedule: 'constant' (the paper's); 'cosine': both learning rates follow a half
            cosine from their value down to 0 over the unit's ``iters`` steps; 'cosine_act':
            only ``act_lr`` does (BRECQ's and QDrop's code decay their activation steps so).
        cache_device: 'auto' (the Trainer's device when the cache's peak takes at most half
            its free memory, else the host; always the host on a CPU) or 'cpu'.
        log_every_n_steps: TensorBoard logging interval of the per-step loss.
        compile: 'off' (eager), or a ``torch.compile`` mode for each unit's forward and
            backward while it learns: 'default', 'reduce-overhead' (CUDA graphs on a GPU),
            'max-autotune'. Results agree with eager ones to float rounding, not bit for bit;
            each unit pays its compile time first. One process only (not with DDP).
        cuda_graph: record each unit's whole step (forward, backward, eq. 6, Adam) once as a
            CUDA graph and replay it: the host issues one launch a step instead of ~160
            kernels. A CUDA device, one process, a constant learning rate; not with AdaRound,
            QDrop's dropping or ``compile``.
        keep_better: a unit whose learned state ends with a higher output MSE on the
            calibration cache than round-to-nearest with the initial activation steps keeps
            round-to-nearest (said in the log line; ``kept`` in the report). Off: the learned
            state is kept whatever its error (what BRECQ's and QDrop's code do).
        keep_best_every: every this many steps, the unit's output MSE on the calibration cache
            is measured as it would freeze (hard rounding, no dropping), and at the end the
            state with the lowest one (the last step's included) is the one frozen; its step
            is ``best_step`` in the report. 0: off, the last step's state (issue 34's
            keep-the-best lever; a check costs a forward pass over the cache).
        act_stage_iters: 0 (default): the activation steps learn with the rounding, in one
            pass over the units. More: BRECQ's two stages. A first pass learns every unit's
            rounding with the activations float (their quantizers off, in the units' caches
            too); the activation steps are then initialised again on the weight-quantized
            network, and a second pass over the units learns only the steps, this many
            iterations a unit, at ``act_lr`` (with ``lr_schedule``'s decay where it applies to
            them), the rounding fixed.
        act_stage_loss_p: the exponent of the output error in that second pass (2: the squared
            error; BRECQ's code runs 2.4).
        act_stage_float_inputs: with ``act_stage_iters`` > 0 only. False (default): in the
            second pass each unit learns from its inputs in the network quantized so far
            (weights and activations). True: from the float network's inputs of the unit,
            with the quantizers inside it that the unit before learned
            (``block_output_steps``: its input quantizer) off while it learns, as BRECQ's code
            (its activation stage caches every block's input and output with the whole network
            float: ``asym`` False).
        loss: the unit's output error. 'mse' (default): the squared error (BRECQ's and QDrop's
            code). 'fisher': BRECQ's paper's Fisher-weighted error, each element's error
            weighted by ``g^2`` (scaled to mean 1), ``g`` the gradient at that element of the
            KL divergence from the float network's output to the quantized one's, computed
            once per unit before it learns (``calib.fisher``). 'fisher_damped': BRECQ's code's
            weight ``(|g| + 1)^2``. Either costs a forward and backward pass of the network
            over the calibration images per unit, and a cache as large as the targets. Not
            with ``cuda_graph``.
        block_output_steps: with ``quant.act_placement blocks`` only. False (default): a
            block's input quantizer learns with that block. True: with the unit whose output
            it quantizes (the block before it, or the first layer), that unit's error then
            measured after it, as BRECQ's and QDrop's code learn every block's output
            quantizer with the block that produces it. A unit whose output goes through
            another operation first (an in-place ReLU, a pooling) keeps the former order.
        unit_blocks: how many consecutive blocks make one reconstruction unit. 2 (default,
            the ``attnround`` recipe's): each run of up to 2 registered blocks (ResNet's,
            MobileNetV2's, ...) where each block's input is exactly the block before's output
            is one unit, its error measured at the last block's output (BRECQ's larger
            units); layers outside blocks and units cut from a traced graph stay as they are.
            1: each block is a unit (the paper's setting and the peers' recipes).
        unit_blocks_in_stage: with ``unit_blocks`` > 1 only. False (default): a run goes on
            across a stage's end (ResNet-20's ``layer1.2`` with ``layer2.0``). True: a run
            also ends where the next block has another parent module (``layer1`` ->
            ``layer2``), so every unit lies inside one stage (measured: no gain on ResNet-20
            W2A2, docs/benchmarks.md).
        join_end_layers: True (default, the ``attnround`` recipe's): the layers before the
            first block (the stem) and after the last (the head: a last conv, the classifier)
            join the block next to them, one unit each end, so the first unit learns from the
            images and the last on the network's output (its logits). Tiny units cost 5-10x
            their float work a step (docs/speed.md); joined, they cost that of their share of
            the larger unit. False: they are units of their own (the paper's setting and the
            peers' recipes).
        plateau_gain: 0 (default): every unit runs ``iters`` steps. More: the adaptive budget
            (``calib.budget``). A unit stops when its mean loss over a window of ``iters / 8``
            steps fell by less than this fraction of the window before's (0.01: 1 %), and the
            steps it did not use go to the units after it, each of which may run up to
            ``iters`` plus all the steps saved before it while its loss still falls so. The
            total stays within the fixed budget. A constant learning rate only, and not with
            AdaRound or ``rounding_args.tau_end`` (their schedules span ``iters``).
        output_weight: 0 (default): a unit learns on its output error alone. More: PD-Quant's
            term on the network's output is added with this weight (their code's is 10): the
            KL divergence from the float network's class probabilities to those of the float
            network after the unit run on the unit's quantized output (``calib.output_term``).
            The model must return (N, classes) logits and torch.fx must trace it, and each
            unit's output must be the only way to the network's output after it. The logged
            loss includes the term; ``keep_better`` and ``keep_best_every`` still compare the
            output MSE. Costs the float network after each unit, forward and backward, every
            step. Not with ``cuda_graph``.
        output_temperature: the softmax temperature of that term (their code's 4).
    """

    iters: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    act_lr: float = 4e-4
    lr_schedule: str = "constant"
    cache_device: str = "auto"
    log_every_n_steps: int = 50
    compile: str = "off"
    cuda_graph: bool = False
    keep_better: bool = True
    keep_best_every: int = 0
    act_stage_iters: int = 0
    act_stage_loss_p: float = 2.0
    act_stage_float_inputs: bool = False
    loss: str = "mse"
    block_output_steps: bool = False
    unit_blocks: int = 2
    unit_blocks_in_stage: bool = False
    join_end_layers: bool = True
    plateau_gain: float = 0.0
    output_weight: float = 0.0
    output_temperature: float = 4.0

    def validate(self) -> ReconConfig:
        check_finite(self, "recon")
        if self.act_stage_iters < 0:
            raise SettingError(f"recon.act_stage_iters={self.act_stage_iters} must be >= 0 "
                               "(0: the activation steps learn with the rounding)")
        if self.act_stage_loss_p <= 0:
            raise SettingError(f"recon.act_stage_loss_p={self.act_stage_loss_p} must be > 0")
        if self.act_stage_float_inputs and self.act_stage_iters == 0:
            raise SettingError("recon.act_stage_float_inputs=true sets the inputs of the second "
                               "pass over the units: set recon.act_stage_iters > 0 too")
        if self.keep_best_every < 0:
            raise SettingError(f"recon.keep_best_every={self.keep_best_every} must be >= 0 "
                               "(0: off)")
        if not 0 <= self.plateau_gain < 1:
            raise SettingError(f"recon.plateau_gain={self.plateau_gain} must be in [0, 1) (0: "
                               "every unit runs recon.iters steps; 0.01: a unit stops when a "
                               "window's loss fell by less than 1 %)")
        if self.plateau_gain > 0 and self.lr_schedule != "constant":
            raise SettingError(f"recon.plateau_gain={self.plateau_gain} ends units early or late,"
                               f" but recon.lr_schedule={self.lr_schedule!r} spans recon.iters "
                               "steps: set one of them to its default")
        if self.unit_blocks < 1:
            raise SettingError(f"recon.unit_blocks={self.unit_blocks} must be >= 1 (1: each "
                               "block is a unit)")
        if self.unit_blocks_in_stage and self.unit_blocks == 1:
            raise SettingError("recon.unit_blocks_in_stage=true needs recon.unit_blocks > 1 "
                               "(with one block a unit there is no run to end)")
        if self.iters < 0 or self.batch_size < 1:
            raise SettingError(f"recon.iters={self.iters} must be >= 0 and recon.batch_size="
                               f"{self.batch_size} positive")
        if self.lr <= 0 or self.act_lr <= 0:
            raise SettingError(f"recon.lr={self.lr} and recon.act_lr={self.act_lr} must be > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise SettingError(f"recon.lr_schedule={self.lr_schedule!r}: use one of "
                               f"{', '.join(LR_SCHEDULES)}")
        if self.cache_device not in ("cpu", "auto"):
            raise SettingError(f"recon.cache_device={self.cache_device!r}: use 'cpu' or 'auto'")
        if self.compile not in COMPILE_MODES:
            raise SettingError(f"recon.compile={self.compile!r}: use one of "
                               f"{', '.join(COMPILE_MODES)}")
        if self.loss not in LOSSES:
            raise SettingError(f"recon.loss={self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.cuda_graph and self.loss != "mse":
            raise SettingError("recon.cuda_graph records the plain squared error: set "
                               "recon.loss=mse or recon.cuda_graph=false")
        if self.output_weight < 0 or self.output_temperature <= 0:
            raise SettingError(f"recon.output_weight={self.output_weight} must be >= 0 (0: off) "
                               f"and recon.output_temperature={self.output_temperature} > 0")
        if self.cuda_graph and self.output_weight > 0:
            raise SettingError("recon.cuda_graph records the output error alone: set "
                               "recon.output_weight=0 or recon.cuda_graph=false")
        if self.cuda_graph and self.compile != "off":
            raise SettingError("recon.cuda_graph and recon.compile are exclusive: the graph "
                               "records the eager step; set one of them off")
        if self.cuda_graph and self.lr_schedule != "constant":
            raise SettingError(f"recon.cuda_graph needs recon.lr_schedule=constant (a "
                               f"schedule would be frozen in the graph), not "
                               f"{self.lr_schedule!r}")
        return self


@dataclass
class RunConfig:
    """Where a run writes and what it evaluates.

    Args:
        out_dir: parent folder of run folders.
        name: run folder name (default: <arch>_<rounding>_w<bits>a<bits>_<date-time>).
        eval_float: evaluate the float model.
        eval_nearest: evaluate round-to-nearest (no reconstruction) for comparison.
        progress: show rich progress bars (per-unit lines are printed either way).
        export: formats to export the finished run to (``onnx``, ``state``), each checked
            against the PyTorch model on the evaluation set (see ``attnround-pl export``).
        onnx_opset: the ONNX export's opset, 18 to 21; None: 21 when a weight or activation
            grid has 4 bits or fewer (INT4/UINT4 codes), else 18 (8-bit types, for older
            runtimes).
        resume: a run folder whose calibration stopped (crash, kill, out of memory): continue
            it from its last finished unit, with the same config and seed.
        overwrite: replace a run folder that already holds a finished or unfinished run.
        host_speed: time the host speed index's reference workload (2-3 s on a 2-core CPU,
            once per process) before calibrating and re-sample it briefly after units (neither
            is calibration time), so that the report states the calibration in reference
            iterations (``calib_reference_iters``); false leaves both out.
    """

    out_dir: str = "runs"
    name: str | None = None
    eval_float: bool = True
    eval_nearest: bool = True
    progress: bool = True
    export: list[str] = field(default_factory=list)
    onnx_opset: int | None = None
    resume: str | None = None
    overwrite: bool = False
    host_speed: bool = True

    def validate(self) -> RunConfig:
        check_finite(self, "run")  # no float setting today: one added later is covered
        for fmt in self.export:
            check_format(fmt)
        opset = self.onnx_opset
        if opset is not None and (isinstance(opset, bool) or opset not in ONNX_OPSETS):
            raise SettingError(
                f"run.onnx_opset={opset!r}: the ONNX export writes opsets "
                f"{ONNX_OPSETS[0]} to {ONNX_OPSETS[-1]} (null: the lowest that holds the bits)"
            )
        return self
