"""Where activations are quantized: at every Conv/Linear input, or once at each block's input.

``quant.act_placement``:

- ``"layers"`` (the default): each quantized layer quantizes its own input. A tensor that feeds
  a layer and something else (a residual block's input feeds its first conv and the identity
  shortcut) stays float on the other path, so the residual stream between blocks is float.
- ``"blocks"``: BRECQ's and QDrop's placement. Each block (a reconstruction unit of a registered
  block class, ``models.units``) quantizes its input once, with its own ``ActQuantizer`` (the
  block's ``input_quantizer``, applied by a forward pre-hook); the layers that read that input
  directly (the first conv, a downsampling shortcut's conv) get a float input quantizer (32
  bits), and the identity shortcut carries the quantized values. Quantizing every block's input
  is quantizing every block's output after its residual add, as those recipes do, so the
  residual stream is low-bit. Layers inside a block keep their own input quantizers (the
  post-activation tensors), as do layers outside every block.

The blocks' quantizers are ordinary ``ActQuantizer`` submodules: ``calibrate_activations``
initialises them and a unit's reconstruction learns their steps with the rest of the unit.
``qmodel.block_inputs`` ({block path: [paths of the layers that read its input]}) is what a
saved model records so that ``place_block_inputs`` rebuilds the same model.

Which unit learns a block's quantizer is the reconstruction's choice: the block itself, or
(``recon.block_output_steps``, BRECQ's and QDrop's order) the unit whose output it quantizes,
found by ``output_quantizers`` and learned through ``WithOutputQuantizer``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .act_quant import FLOAT_BITS, ActQuantizer
from .errors import QuantConfigError
from .layers import QuantLayer

PLACEMENTS = ("layers", "blocks")


def check_placement(placement: Any) -> str:
    if placement not in PLACEMENTS:
        raise QuantConfigError(
            f"unknown act_placement {placement!r}; valid: 'layers' (each Conv/Linear input) or "
            "'blocks' (each block's input once, the identity shortcut quantized: BRECQ / QDrop)"
        )
    return placement


def _quantize_input(block: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The forward pre-hook of a block with an input quantizer."""
    return (block.input_quantizer(args[0]), *args[1:])


def _float_pass(module: nn.Module, example: Tensor, handles: list[Any]) -> None:
    """One eval-mode forward of ``example`` with every activation quantizer off (their steps
    may not be initialised yet); afterwards, also on error, ``handles`` removed and the
    quantizers and train flag restored."""
    quantizers = {q: q.enabled for q in module.modules() if isinstance(q, ActQuantizer)}
    was_training = module.training
    try:
        for q in quantizers:
            q.enabled = False
        module.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
        for q, enabled in quantizers.items():
            q.enabled = enabled
        module.train(was_training)


@torch.no_grad()
def find_block_consumers(
    qmodel: nn.Module, blocks: Iterable[str], example: Tensor
) -> dict[str, list[str]]:
    """For each block path, the quantized layers inside it whose input is the block's input
    tensor itself (found on one forward pass of ``example``, activations float)."""
    blocks = list(blocks)
    entered: dict[int, str] = {}  # id of a block's input tensor -> the block
    found: dict[str, list[str]] = {b: [] for b in blocks}
    handles = []
    for path in blocks:
        block = qmodel.get_submodule(path)

        def enter(module: nn.Module, args: tuple[Any, ...], path: str = path) -> None:
            entered[id(args[0])] = path

        handles.append(block.register_forward_pre_hook(enter))
        for name, layer in block.named_modules():
            if isinstance(layer, QuantLayer):

                def read(module: nn.Module, args: tuple[Any, ...], path: str = path,
                         name: str = f"{path}.{name}") -> None:
                    if entered.get(id(args[0])) == path and name not in found[path]:
                        found[path].append(name)

                handles.append(layer.register_forward_pre_hook(read))
    _float_pass(qmodel, example, handles)
    return found


def place_block_inputs(qmodel: nn.Module, consumers: Mapping[str, list[str]]
                       ) -> dict[str, list[str]]:
    """Give each block in ``consumers`` ({block path: layers reading its input}) an input
    quantizer, the first consumer's own (its bits, grid, border, dropping and seed as
    ``quantize_model`` made them), and every consumer a float input quantizer; records the map
    as ``qmodel.block_inputs`` and returns it. Blocks none of whose layers read the input
    directly are left as they are."""
    placed: dict[str, list[str]] = {}
    for path, layers in consumers.items():
        if not layers:
            continue
        block = qmodel.get_submodule(path)
        if isinstance(getattr(block, "input_quantizer", None), ActQuantizer):
            raise QuantConfigError(f"block '{path}' already quantizes its input")
        readers = [qmodel.get_submodule(name) for name in layers]
        for name, layer in zip(layers, readers, strict=True):
            if not isinstance(layer, QuantLayer):
                raise QuantConfigError(f"'{name}' (reading block '{path}''s input) is not a "
                                       "quantized layer")
        block.input_quantizer = readers[0].input_quantizer
        block.register_forward_pre_hook(_quantize_input)
        for layer in readers:
            layer.input_quantizer = ActQuantizer(FLOAT_BITS, seed=layer.input_quantizer.seed)
        placed[path] = list(layers)
    qmodel.block_inputs = {**getattr(qmodel, "block_inputs", {}), **placed}
    return placed


def block_input_quantizers(qmodel: nn.Module) -> dict[str, ActQuantizer]:
    """{block path: its input quantizer} of a model with ``act_placement="blocks"``."""
    return {path: qmodel.get_submodule(path).input_quantizer
            for path in getattr(qmodel, "block_inputs", {})}


@torch.no_grad()
def entry_quantizers(unit: nn.Module, example: Tensor) -> list[ActQuantizer]:
    """The active quantizers that quantize ``unit``'s input itself: its own
    ``input_quantizer`` (a quantized layer, or a block with ``act_placement="blocks"``), else
    those of the quantized layers inside it that read the input directly (found on one float
    forward of ``example``)."""
    own = getattr(unit, "input_quantizer", None)
    if isinstance(own, ActQuantizer):
        return [own] if own.active else []
    found: list[ActQuantizer] = []

    def read(layer: nn.Module, args: tuple[Any, ...]) -> None:
        aq = layer.input_quantizer
        if args[0] is example and aq.active and aq not in found:
            found.append(aq)

    handles = [m.register_forward_pre_hook(read) for m in unit.modules()
               if isinstance(m, QuantLayer)]
    _float_pass(unit, example, handles)
    return found


@torch.no_grad()
def output_quantizers(qmodel: nn.Module, units: Sequence[nn.Module | None], example: Tensor
                      ) -> list[ActQuantizer | None]:
    """For each of ``units`` (modules of ``qmodel``; None for one to skip), the block input
    quantizer (``act_placement="blocks"``) whose input is exactly that unit's output, the same
    tensor with the same values, on one float forward of ``example``; None where there is
    none (the next module transforms the output first, or the last unit). BRECQ and QDrop
    learn that quantizer with the unit that produces its input (``WithOutputQuantizer``)."""
    blocks = {path: q for path, q in block_input_quantizers(qmodel).items()}
    outputs: dict[int, tuple[Tensor, Tensor]] = {}  # unit index -> (its output, a copy)
    found: list[ActQuantizer | None] = [None] * len(units)
    handles = []
    for index, unit in enumerate(units):
        if unit is None:
            continue

        def produce(module: nn.Module, args: tuple[Any, ...], out: Any, index: int = index
                    ) -> None:
            if isinstance(out, Tensor):
                outputs[index] = (out, out.clone())

        handles.append(unit.register_forward_hook(produce))
    for path, quantizer in blocks.items():

        def consume(module: nn.Module, args: tuple[Any, ...],
                    quantizer: ActQuantizer = quantizer) -> None:
            x = args[0]
            for index, (out, copy) in outputs.items():
                mine = {id(m) for m in units[index].modules()}
                if (x is out and torch.equal(x, copy) and id(quantizer) not in mine
                        and found[index] is None):
                    found[index] = quantizer

        handles.append(qmodel.get_submodule(path).register_forward_pre_hook(consume,
                                                                            prepend=True))
    _float_pass(qmodel, example, handles)
    return found


class WithOutputQuantizer(nn.Module):
    """``unit`` followed by ``output_quantizer`` (the next block's input quantizer, see
    ``output_quantizers``), both shared with the quantized model: learning it learns the
    quantizer's step with the unit, and its error is measured after the quantizer."""

    def __init__(self, unit: nn.Module, output_quantizer: ActQuantizer) -> None:
        super().__init__()
        self.unit = unit
        self.output_quantizer = output_quantizer

    @property
    def input_quantizer(self) -> ActQuantizer | None:
        """The unit's own input quantizer, if it has one (``entry_quantizers``)."""
        own = getattr(self.unit, "input_quantizer", None)
        return own if isinstance(own, ActQuantizer) else None

    def forward(self, x: Tensor) -> Tensor:
        return self.output_quantizer(self.unit(x))
