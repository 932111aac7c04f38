"""Pure-PyTorch quantization core: grids, scale search, rounding functions, quantizers, layers.

Nothing in this package imports Lightning, nor the packages around it (``mixed``, ``export``,
``calib``): a mixed-precision allocation comes in as per-layer bits, file formats are in
``export``.

The names below are imported from their modules on first use, so importing the package does
not load torch until a name is used.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "act_quant": ["ActQuantizer", "DropSettings"],
    "bn_fold": ["fold_batchnorms", "fold_bn_into_conv"],
    "config": ["QuantConfig"],
    "errors": ["QuantConfigError"],
    "grid": ["UniformGrid", "check_bits"],
    "layers": ["QuantConv1d", "QuantConv2d", "QuantLayer", "QuantLinear"],
    "loss": ["output_mse", "prediction_difference", "reconstruction_loss"],
    "model": [
        "act_border_parameters",
        "activations_off",
        "active_roundings",
        "as_frozen",
        "act_step_parameters",
        "calibrate_activations",
        "finish_rounding_gradients",
        "freeze_model",
        "quant_layers",
        "quantizable_layers",
        "quantize_model",
        "round_to_nearest",
        "rounding_parameters",
        "rounding_regularizer",
        "set_learning",
        "set_progress",
        "set_quant_state",
        "shape_gradients_before_step",
    ],
    "order": ["LeafTracer", "execution_order", "float_ops", "never_run_layers", "trace_graph"],
    "rounding": [
        "ROUNDINGS",
        "AdaRoundSettings",
        "AdaRounding",
        "AttentionRounding",
        "AttentionSettings",
        "CeilRounding",
        "FloorRounding",
        "NearestRounding",
        "Rounding",
        "StochasticRounding",
        "make_rounding",
        "rounding_settings",
    ],
    "scale_search": ["fake_quantize", "search_qparams"],
    "weight_quant": ["WeightQuantizer"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
