"""BRECQ's Fisher-weighted output error (``recon.loss fisher``): the weights of one unit.

BRECQ (Li et al. 2021, section 3.2, eq. 10) approximates the task loss's Hessian at a block's
output by the diagonal of the Fisher information: each element of the squared output error is
weighted by ``g^2``, where ``g`` is the gradient at that element of the KL divergence from the
float network's softmax output to the quantized network's. Their ``quant/data_utils.py``
(``save_grad_data``) computes ``g`` once per block, before it learns, on the calibration images:

- the network quantized up to and including the block (earlier blocks as learned, this block
  at its starting rounding, which for their AdaRound is round-to-nearest), and float after it;
- the KL averaged over a batch of the reconstruction's batch size (``reduction='batchmean'``),
  so ``g`` is the per-sample gradient divided by that size.

Two forms of the weight (``FORMS``):

- ``'fisher'``: the paper's ``g^2``, scaled to mean 1 over the unit's calibration outputs (a
  constant factor: it keeps the rounding regulariser's weight on the plain error's scale; the
  scaling is the line their code leaves commented out);
- ``'fisher_damped'``: their code's ``(|g| + 1)^2`` (``cached_grads.abs() + 1.0``; their
  ``block_recon.py`` loss ``fisher_diag``). On the embedded models ``|g|`` is at most 0.03,
  so these weights are 1 to within 6 % (``benchmarks/fisher_weights.py``): the plain squared
  error, nearly.

This module does the same for a unit of ``models.split_units``: a module unit's gradient at its
output (a forward hook makes the output a leaf), a graph unit's at its region's output nodes
(joined as its targets are). The divergence is computed with reduction 'sum' and divided by
``batch_size``, so the capture batches' size does not change ``g``. Their released
``main_imagenet.py`` runs the plain squared error (``opt_mode='mse'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Unit
from ..models.graph_units import joined_outputs
from ..quant import quant_layers, round_to_nearest
from ..quant.act_quant import ActQuantizer
from .distributed import reduce_sums

FORMS = ("fisher", "fisher_damped")  # recon.loss's weighted forms


@contextmanager
def float_after(qmodel: nn.Module, units: Sequence[Unit], index: int) -> Iterator[None]:
    """Within the block the units after ``units[index]`` compute in float: their layers'
    weight and input quantization off, and a module unit's other activation quantizers (a
    block's input quantizer, ``quant.placement``) too. Everything is restored after."""
    layers = quant_layers(qmodel)
    switches: list[tuple[object, str]] = []
    for unit in units[index + 1 :]:
        for name in unit.layers:
            switches.append((layers[name], "weight_enabled"))
            switches.append((layers[name].input_quantizer, "enabled"))
        if unit.region is None:
            switches += [(q, "enabled") for module in unit.submodules(qmodel)
                         for q in module.modules() if isinstance(q, ActQuantizer)]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr in switches]
    for owner, attr in switches:
        setattr(owner, attr, False)
    try:
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def _leaf(value: Tensor, keep: Callable[[Tensor], object]) -> Tensor:
    """``value`` as a new leaf that requires a gradient (handed to ``keep``), and what the
    forward goes on with: a copy of it, since the next op may be in place (a ReLU(inplace))."""
    leaf = value.detach().requires_grad_()
    keep(leaf)
    return leaf.clone()


class _OutputLeaves(fx.Interpreter):
    """Runs a traced graph, turning the values of the nodes ``names`` into leaves that require
    a gradient (``leaves``, in the order of ``names``)."""

    def __init__(self, module: fx.GraphModule, names: Sequence[str]) -> None:
        super().__init__(module)
        self.names = list(names)
        self.found: dict[str, Tensor] = {}

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        if n.name in self.names:
            value = _leaf(value, lambda leaf: self.found.__setitem__(n.name, leaf))
        return value

    @property
    def leaves(self) -> list[Tensor]:
        return [self.found[name] for name in self.names]


def fisher_weights(grads: Tensor, form: str) -> Tensor:
    """The output error's element weights from ``output_gradients``'s ``g`` (``FORMS``),
    in place of ``grads``. ``'fisher'`` scales by the mean of ``g^2`` over every rank's shard
    (a ``g`` that is 0 everywhere leaves the plain error, weights 1)."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: one of {FORMS}")
    if form == "fisher_damped":
        return grads.abs_().add_(1.0).pow_(2)
    squares = grads.pow_(2)
    total, count = reduce_sums([squares.sum().item(), float(squares.numel())])
    if total == 0.0:
        return squares.fill_(1.0)
    return squares.mul_(count / total)


def output_gradients(
    qmodel: nn.Module, float_model: nn.Module, units: Sequence[Unit], index: int,
    batches: Sequence[Tensor], batch_size: int, device: str = "cpu",
) -> Tensor:
    """``g`` for every element of ``units[index]``'s output on ``batches`` (same shape as its
    cached targets), as BRECQ computes it (see the module's docstring), with the network's
    current state: earlier units as learned, this one rounded to nearest, later ones float;
    activation quantizers as they are now (off in BRECQ's rounding pass)."""
    unit = units[index]
    first = next(qmodel.parameters()).device
    layers = quant_layers(qmodel)
    store: list[Tensor] = []
    training = qmodel.training, float_model.training
    qmodel.eval()
    float_model.eval()
    with ExitStack() as stack:
        stack.enter_context(float_after(qmodel, units, index))
        for name in unit.layers:
            stack.enter_context(round_to_nearest(layers[name]))
        if unit.region is None:
            module = unit.submodules(qmodel)[-1]  # a chain's output is its last block's
            leaves: list[Tensor] = []

            def as_leaf(m: nn.Module, args: object, out: Tensor) -> Tensor:
                return _leaf(out, leaves.append)

            stack.callback(module.register_forward_hook(as_leaf).remove)

            def run(x: Tensor) -> tuple[Tensor, list[Tensor]]:
                leaves.clear()
                return qmodel(x), list(leaves)
        else:
            graph_module = fx.GraphModule(qmodel, unit.region.trace.graph)
            outputs = unit.region.outputs

            def run(x: Tensor) -> tuple[Tensor, list[Tensor]]:
                interpreter = _OutputLeaves(graph_module, outputs)
                return interpreter.run(x), interpreter.leaves

        try:
            for batch in batches:
                x = batch.to(first)
                with torch.no_grad():
                    target = F.softmax(float_model(x), dim=1)
                with torch.enable_grad():
                    logits, found = run(x)
                    if not found:
                        raise RuntimeError(f"unit {unit.name!r} was never reached by the "
                                           "forward pass")
                    divergence = F.kl_div(F.log_softmax(logits, dim=1), target,
                                          reduction="sum") / batch_size
                    grads = torch.autograd.grad(divergence, found)
                store.append(joined_outputs(grads).detach().to(device))
        finally:
            qmodel.train(training[0])
            float_model.train(training[1])
    return torch.cat(store)
