"""Pure-PyTorch quantization core: grids, scale search, rounding functions, quantizers, layers.

Nothing in this package imports Lightning.
"""

from .act_quant import ActQuantizer
from .bn_fold import fold_batchnorms, fold_bn_into_conv
from .checkpoint import CheckpointError, load_quantized, read_quantized, save_quantized
from .config import QuantConfig
from .errors import QuantConfigError
from .grid import UniformGrid, check_bits
from .layers import QuantConv1d, QuantConv2d, QuantLayer, QuantLinear
from .loss import output_mse, reconstruction_loss
from .model import (
    act_border_parameters,
    act_step_parameters,
    calibrate_activations,
    finish_rounding_gradients,
    freeze_model,
    quant_layers,
    quantizable_layers,
    quantize_model,
    round_to_nearest,
    rounding_parameters,
    rounding_regularizer,
    set_learning,
    set_progress,
    set_quant_state,
)
from .order import LeafTracer, execution_order, float_ops, never_run_layers, trace_graph
from .rounding import (
    ROUNDINGS,
    AdaRounding,
    AttentionRounding,
    CeilRounding,
    FloorRounding,
    NearestRounding,
    Rounding,
    StochasticRounding,
    make_rounding,
)
from .scale_search import fake_quantize, search_qparams
from .weight_quant import WeightQuantizer

__all__ = [
    "ROUNDINGS",
    "ActQuantizer",
    "CheckpointError",
    "load_quantized",
    "read_quantized",
    "save_quantized",
    "AdaRounding",
    "AttentionRounding",
    "CeilRounding",
    "FloorRounding",
    "NearestRounding",
    "QuantConfig",
    "QuantConfigError",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLayer",
    "QuantLinear",
    "Rounding",
    "StochasticRounding",
    "UniformGrid",
    "WeightQuantizer",
    "act_border_parameters",
    "act_step_parameters",
    "output_mse",
    "reconstruction_loss",
    "round_to_nearest",
    "rounding_parameters",
    "rounding_regularizer",
    "set_learning",
    "set_progress",
    "calibrate_activations",
    "check_bits",
    "execution_order",
    "fake_quantize",
    "float_ops",
    "LeafTracer",
    "never_run_layers",
    "trace_graph",
    "fold_batchnorms",
    "fold_bn_into_conv",
    "finish_rounding_gradients",
    "freeze_model",
    "make_rounding",
    "quant_layers",
    "quantizable_layers",
    "quantize_model",
    "search_qparams",
    "set_quant_state",
]
