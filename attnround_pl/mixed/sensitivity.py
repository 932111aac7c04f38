"""Per-layer weight bits by measured sensitivity under a size budget (``mixed.method:
sensitivity``; issue 34, not in the paper).

Each free layer's sensitivity at ``b`` bits is the mean squared error of the network's output
when that layer alone has round-to-nearest ``b``-bit weights (the scale search and grid the
quantized model will use; activations float), against the float model, on a few calibration
images. The allocation treats the errors as additive, as HAWQ and the layer-wise
mixed-precision literature do, and lowers bits greedily from the widest: each move takes the
layer whose next lower width costs the least added error per byte saved, until the model fits
the budget. Compared with Algorithm 1 (``allocation``), which clusters layers by their weights'
coding length alone, this asks the data which layers the output is sensitive to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..quant.config import QuantConfig
from ..quant.rounding import NearestRounding
from ..quant.weight_quant import WeightQuantizer

SENSITIVITY_IMAGES = 256  # calibration images the output errors are measured on


@torch.no_grad()
def layer_errors(model: nn.Module, layers: Sequence[tuple[str, nn.Module]],
                 bit_list: Sequence[int], batches: Sequence[Tensor], quant: QuantConfig,
                 images: int = SENSITIVITY_IMAGES) -> dict[str, dict[int, float]]:
    """{layer: {bits: output MSE}} for each of ``layers`` (modules of ``model``, an eval-mode
    float model with BatchNorms folded) at each width of ``bit_list``: that layer's weights
    quantized alone (round-to-nearest, ``quant``'s per-channel, symmetry and search exponent),
    on the first ``images`` images of ``batches``. ``model`` is left as it was."""
    inputs = torch.cat(list(batches))[:images]
    device = next(model.parameters()).device
    inputs = inputs.to(device)
    reference = model(inputs)
    errors: dict[str, dict[int, float]] = {}
    for name, layer in layers:
        weight = layer.weight.data
        errors[name] = {}
        for bits in bit_list:
            quantizer = WeightQuantizer(weight, bits, NearestRounding(),
                                        per_channel=quant.w_per_channel,
                                        symmetric=quant.w_symmetric,
                                        search_p=quant.scale_search_p)
            layer.weight.data = quantizer(weight)
            try:
                errors[name][bits] = float(torch.mean((model(inputs) - reference) ** 2))
            finally:
                layer.weight.data = weight
    return errors


def lower_bits_greedily(params: dict[str, int], errors: dict[str, dict[int, float]],
                        bit_list: Sequence[int], budget_bits: float) -> dict[str, int] | None:
    """Bits per layer of ``errors`` whose summed ``params x bits`` is at most ``budget_bits``:
    every layer starts at the widest width and, while over budget, the layer whose next lower
    width adds the least error per bit saved moves down (ties: the first in order). None when
    even the narrowest width everywhere is over budget."""
    widths = sorted(bit_list)
    bits = {name: widths[-1] for name in errors}
    used = sum(params[n] * b for n, b in bits.items())
    while used > budget_bits:
        best: tuple[float, str] | None = None
        for name, b in bits.items():
            i = widths.index(b)
            if i == 0:
                continue
            lower = widths[i - 1]
            cost = (errors[name][lower] - errors[name][b]) / (params[name] * (b - lower))
            if best is None or cost < best[0]:
                best = (cost, name)
        if best is None:
            return None
        name = best[1]
        lower = widths[widths.index(bits[name]) - 1]
        used -= params[name] * (bits[name] - lower)
        bits[name] = lower
    return bits
