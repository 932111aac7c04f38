"""Model-level API: fold BatchNorm, swap every Conv2d/Linear for its quantized twin, and the
few operations that act on all quantized layers at once."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .act_quant import ActQuantizer
from .bn_fold import fold_batchnorms
from .config import QuantConfig
from .errors import QuantConfigError
from .grid import check_bits
from .layers import QUANT_LAYER_TYPES, QuantLayer
from .order import execution_order
from .profiles import act_signed, check_layer_bits
from .rounding import Rounding, build_rounding
from .tree import set_submodule
from .weight_quant import WeightQuantizer


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv1d / Conv2d / Linear layers of ``model`` in registration order (see
    ``order.execution_order`` for the order the forward pass calls them)."""
    return [(n, m) for n, m in model.named_modules() if type(m) in QUANT_LAYER_TYPES]


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The quantized layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def layer_bits(
    config: QuantConfig, index: int, count: int, per_layer: int | None = None
) -> tuple[int, int]:
    """(weight bits, input bits) of layer ``index`` of ``count``: first and last keep their own;
    ``per_layer`` (``layer_w_bits``, e.g. a mixed-precision allocation) sets the others'
    weight bits."""
    w_bits, a_bits = per_layer or config.w_bits, config.a_bits
    if index == 0:
        w_bits, a_bits = config.first_layer_w_bits, config.first_layer_a_bits
    if index == count - 1:
        w_bits, a_bits = config.last_layer_w_bits, config.last_layer_a_bits
    return w_bits, a_bits


def folded_copy(model: nn.Module) -> tuple[nn.Module, list[str], list[str]]:
    """An eval-mode copy of ``model`` with its BatchNorms folded, the names of the layers to
    quantize in execution order and the names of those the forward never calls; refused as
    QuantConfigError when there is no layer to quantize or a weight is NaN or Inf. What
    ``quantize_model`` works on, and what a mixed-precision allocation measures."""
    if not quantizable_layers(model):
        raise QuantConfigError(
            f"model {type(model).__name__} has no Conv2d or Linear layer to quantize"
        )
    qmodel = copy.deepcopy(model).eval()
    registered = dict(quantizable_layers(qmodel))
    order = [name for name in execution_order(qmodel) if name in registered]
    never_run = [name for name in registered if name not in set(order)]
    if not order:
        raise QuantConfigError(
            f"the forward pass of {type(model).__name__} calls none of its Conv2d or Linear "
            "layers: nothing to quantize"
        )
    for name in order:
        if not torch.isfinite(registered[name].weight).all():
            raise QuantConfigError(f"weights of layer '{name}' contain NaN or Inf")
    fold_batchnorms(qmodel)
    return qmodel, order, never_run


def quantize_model(
    model: nn.Module, config: QuantConfig | None = None, *,
    layer_w_bits: dict[str, int] | None = None, search_scales: bool = True,
) -> nn.Module:
    """Return a quantized copy of ``model``; ``model`` itself is never modified.

    The copy is put in eval mode, its BatchNorms are folded into the preceding convs, and every
    Conv2d / Linear is replaced by a QuantConv2d / QuantLinear whose weight quantizer is
    initialised by the MSE scale search and the configured rounding function. Input quantizers
    still need ``calibrate_activations`` before the model is used with quantized activations.
    ``layer_w_bits`` ({layer name: weight bits}, e.g. ``mixed.allocate_model(...).layer_bits()``)
    adds to (and wins over) ``config.layer_w_bits``; the first and last layer keep their own.
    ``search_scales=False`` skips the MSE search (scales 1, zero points 0): for loaders that
    overwrite every quantizer's state right after (seconds saved on ResNet-50-sized models).
    ``config.profile`` shapes the grids (``profiles``): with ``tensorrt`` every input quantizer
    is signed (int8, zero point 0, even after a ReLU) and every layer's bits must be 8.
    Raises QuantConfigError, naming the value or layer, for bad settings or weights.

    Layers are taken in execution order (``order.execution_order`` of the eval-mode copy): the
    first and last layer to run keep their own bits, and a layer's index (its seeds) counts in
    that order. Layers the traced forward never calls (an eval-mode aux classifier) stay float
    (plain Conv/Linear); their names are the returned model's ``never_run_layers`` attribute.
    """
    config = (config or QuantConfig()).validate()
    for name, bits in (layer_w_bits or {}).items():
        check_bits(bits, "layer_w_bits", name)
    check_layer_bits(config.profile, layer_w_bits)
    qmodel, order, never_run = folded_copy(model)
    count = len(order)
    per_layer = {**(config.layer_w_bits or {}), **(layer_w_bits or {})}
    settings = config.rounding_settings()
    swaps = []
    for index, name in enumerate(order):
        layer = qmodel.get_submodule(name)
        w_bits, a_bits = layer_bits(config, index, count, per_layer.get(name))
        rounding = build_rounding(config.rounding, settings, seed=config.layer_seed(index))
        wq = WeightQuantizer(
            layer.weight,
            w_bits,
            rounding,
            per_channel=config.w_per_channel,
            symmetric=config.w_symmetric,
            search=search_scales,
            search_p=config.scale_search_p,
        )
        aq = ActQuantizer(a_bits, signed=act_signed(config.profile),
                          seed=config.layer_seed(index), border=config.act_border,
                          drop_prob=config.drop.prob, search_p=config.scale_search_p)
        swaps.append((name, QUANT_LAYER_TYPES[type(layer)](layer, wq, aq)))
    for name, qlayer in swaps:
        set_submodule(qmodel, name, qlayer)
    qmodel.never_run_layers = never_run  # left float: the forward never calls them
    qmodel.drop_float_inputs = config.drop.float_inputs  # read by the reconstruction
    return qmodel


def act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


@torch.no_grad()
def calibrate_activations(model: nn.Module, batches: Iterable[Tensor],
                          quantized_weights: bool = False) -> int:
    """Initialise every input quantizer's step by the MSE search over ``batches``.

    Ranges are observed on the float-weight network (weight quantization off for the pass) so the
    initial steps do not depend on the rounding's initial state; ``quantized_weights``: on the
    network as its weights are quantized now (BRECQ's activation stage initialises its steps
    once the rounding is learned). Returns the number of batches.
    """
    layers = quant_layers(model).values()
    quantizers = act_quantizers(model)
    saved = [(layer, layer.weight_enabled) for layer in layers]
    for layer, _ in saved:
        layer.weight_enabled = layer.weight_enabled and quantized_weights
    for q in quantizers:
        q.start_observing()
    seen = 0
    try:
        for batch in batches:
            model(batch)
            seen += 1
    finally:
        for layer, state in saved:
            layer.weight_enabled = state
    if seen == 0:
        raise QuantConfigError("calibrate_activations got no batches")
    for q in quantizers:
        q.finish_observing()
    return seen


def set_quant_state(model: nn.Module, weights: bool, activations: bool) -> None:
    """Switch weight and activation quantization of every quantized layer on or off."""
    for layer in quant_layers(model).values():
        layer.weight_enabled = weights
        layer.input_quantizer.enabled = activations


@contextmanager
def activations_off(model: nn.Module) -> Iterator[None]:
    """Within the block no activation quantizer of ``model`` quantizes (each one's ``enabled``
    is restored after): BRECQ's rounding stage learns with float activations."""
    quantizers = act_quantizers(model)
    enabled = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, was in zip(quantizers, enabled, strict=True):
            q.enabled = was


@contextmanager
def round_to_nearest(model: nn.Module) -> Iterator[None]:
    """Within the block, unfrozen weight quantizers of ``model`` round to nearest."""
    quantizers = [m for m in model.modules() if isinstance(m, WeightQuantizer)]
    for q in quantizers:
        q.nearest_override = True
    try:
        yield
    finally:
        for q in quantizers:
            q.nearest_override = False


@contextmanager
def as_frozen(model: nn.Module) -> Iterator[None]:
    """Within the block ``model`` computes what it would once frozen, without freezing: the
    unfrozen weight quantizers give the integer codes ``freeze`` would store (AdaRound's
    ``h >= 0.5``, not its soft value) and QDrop's dropping is off; learning goes on after it."""
    weights = [m for m in model.modules() if isinstance(m, WeightQuantizer)]
    acts = act_quantizers(model)
    dropping = [q.dropping for q in acts]
    for q in weights:
        q.hard_override = True
    for q in acts:
        q.dropping = False
    try:
        yield
    finally:
        for q in weights:
            q.hard_override = False
        for q, was in zip(acts, dropping, strict=True):
            q.dropping = was


def active_roundings(model: nn.Module) -> list[Rounding]:
    """The rounding functions of the unfrozen weight quantizers inside ``model``."""
    return [
        m.rounding
        for m in model.modules()
        if isinstance(m, WeightQuantizer) and m.rounding is not None
    ]


def rounding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Learnable parameters of the (unfrozen) rounding functions inside ``model``."""
    return [p for r in active_roundings(model) for p in r.parameters()]


def act_step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Step sizes of the active activation quantizers inside ``model``."""
    return [q.step for q in act_quantizers(model) if q.active and q.enabled]


def act_border_parameters(model: nn.Module) -> list[nn.Parameter]:
    """AQuant border parameters of the active activation quantizers inside ``model``."""
    return [
        p for q in act_quantizers(model) if q.active and q.enabled and q.border is not None
        for p in q.border.parameters()
    ]


def set_learning(model: nn.Module, batch_size: int | None) -> None:
    """Enter (``batch_size``: the global batch) or leave (None) a reconstruction: QDrop's
    dropping is on inside it, the LSQ gradient scale counts ``batch_size`` samples, and the
    weight quantizers keep ``w / s`` from step to step (the float weights, scales and device
    must not change in between)."""
    for q in act_quantizers(model):
        q.dropping = batch_size is not None
        q.lsq_batch = batch_size
    for module in model.modules():
        if isinstance(module, WeightQuantizer):
            module.set_learning(batch_size is not None)


def set_progress(model: nn.Module | Sequence[Rounding], t: float) -> None:
    """Tell every rounding inside ``model`` (or of a list from ``active_roundings``) that a
    fraction ``t`` of the optimisation is done."""
    for rounding in _roundings(model):
        rounding.set_progress(t)


def finish_rounding_gradients(model: nn.Module | Sequence[Rounding]) -> None:
    """After backward, before the optimizer step: let every rounding inside ``model`` (or of a
    list) shape its summed gradient (Attention Round's eq. 6). Called once per step by the
    pre-hook ``shape_gradients_before_step`` installs; a loop using such an optimizer must not
    call it again."""
    groups: dict[type[Rounding], list[Rounding]] = {}
    for rounding in _roundings(model):
        groups.setdefault(type(rounding), []).append(rounding)
    for kind, roundings in groups.items():
        kind.finish_gradients(roundings)


def shape_gradients_before_step(
    optimizer: torch.optim.Optimizer, model: nn.Module | Sequence[Rounding]
) -> RemovableHandle:
    """Make every ``optimizer.step()`` apply eq. 6 to the roundings' gradients first (an
    optimizer step pre-hook), so no training loop can skip it or apply it twice. The step runs
    after backward, after DDP's all-reduce and after a gradient scaler's unscaling: eq. 6 sees
    the whole batch's gradient, as it must."""
    roundings = _roundings(model)
    return optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: finish_rounding_gradients(roundings)
    )


def rounding_regularizer(model: nn.Module | Sequence[Rounding]) -> Tensor:
    """Sum of the rounding regularisers inside ``model`` (or of a list); zero when none has
    one (the roundings without a regulariser are not asked)."""
    terms = [r.regularizer() for r in _roundings(model) if r.has_regularizer]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _roundings(model: nn.Module | Sequence[Rounding]) -> list[Rounding]:
    return active_roundings(model) if isinstance(model, nn.Module) else list(model)


def freeze_model(model: nn.Module) -> None:
    """Freeze every quantized layer's rounding to integer codes."""
    for layer in quant_layers(model).values():
        layer.freeze()
