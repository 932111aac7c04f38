"""Deployment profiles (``quant.profile``): the grids a target runtime takes, set and checked in
one place.

- ``default``: no constraint beyond the settings' own ranges (unsigned activation grids after
  a ReLU, asymmetric weights unless ``w_symmetric``, 2..8 bits, mixed precision).
- ``tensorrt``: what TensorRT's explicit quantization (Q/DQ ONNX) takes. TensorRT quantizes
  symmetrically: INT8 codes with zero point 0, ``x = q * s`` (``TENSORRT_DOCS["types"]``,
  ``["schemes"]``); its ONNX parser refuses a QuantizeLinear / DequantizeLinear whose zero point
  is not all zeros or is UINT8 on a quantized tensor, and takes a per-axis scale only for
  weights (one scale per output channel, K of KCRS), activations per tensor
  (``TENSORRT_DOCS["onnx_parser"]``). The profile therefore gives weights a signed symmetric
  grid per output channel (axis 0) and every activation quantizer a signed per-tensor grid
  (``ActQuantizer(signed=True)``: int8 even after a ReLU, where the default picks uint8), and
  requires 8 bits for every weight and activation grid. INT4 is refused: TensorRT's INT4 is
  weight-only with per-block scales (blocks of 64 or 128 along one of the last two dimensions,
  ``["schemes"]``), deployed for MatMul/Gemm weights with 16-bit activations (W4A16,
  ``["model_optimizer"]``); this exporter writes per-channel scales, not blocks, and quantizes
  every Conv/Gemm input. AQuant's learned border is refused: it exports as a per-channel float
  affine (and a Clip) before each QuantizeLinear, not the plain INT8 Q/DQ on a Conv/Gemm input.

``tensorrt`` implies ``w_symmetric=True`` (set on the config, so ``to_dict`` records the grid
used) and per-channel weights; ``w_per_channel=False`` given with it is a QuantConfigError.
``export.tensorrt_check`` verifies an exported graph against these rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import QuantConfigError

DEFAULT = "default"
TENSORRT = "tensorrt"
PROFILES = (DEFAULT, TENSORRT)
TENSORRT_BITS = 8
TENSORRT_DOCS = {
    "types": "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/"
             "work-quantized-types.html",
    "schemes": "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/"
               "quantized-types-schemes.html",
    "explicit": "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/"
                "quantized-types-explicit-quantization.html",
    "onnx_parser": "https://github.com/onnx/onnx-tensorrt/blob/10.1-GA/docs/operators.md",
    "model_optimizer": "https://nvidia.github.io/Model-Optimizer/guides/0_support_matrix.html",
    "residual": "https://docs.nvidia.com/deeplearning/tensorrt/tensorflow-quantization-toolkit/"
                "docs/docs/add_custom_qdq_cases.html",
}
_WHY = {
    "w": "TensorRT's explicit quantization takes INT8 weights (zero point 0) on Conv/Gemm; its "
         "INT4 is weight-only with per-block scales (64 or 128) for MatMul/Gemm, which this "
         "export does not write; use 8",
    "a": "TensorRT quantizes Conv/Gemm inputs to INT8 per tensor (zero point 0); use 8",
}


def check_profile_name(profile: Any) -> str:
    """``profile`` if it is one of ``PROFILES``, else a one-line QuantConfigError."""
    if profile not in PROFILES:
        raise QuantConfigError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    return profile


def act_signed(profile: str) -> bool | None:
    """The ``signed`` an activation quantizer gets under ``profile``: True (int8, zero point 0)
    for tensorrt, None (picked from the observed data: unsigned after a ReLU) otherwise."""
    return True if profile == TENSORRT else None


def apply_profile(config: Any) -> None:
    """Set what ``config.profile`` implies on ``config`` (a ``QuantConfig``): tensorrt makes the
    weight grid symmetric (signed, zero point 0). A per-channel request is left as given:
    ``check_profile`` refuses per-tensor weights."""
    if getattr(config, "profile", DEFAULT) == TENSORRT:
        config.w_symmetric = True


def _refuse(key: str, value: Any, why: str) -> QuantConfigError:
    return QuantConfigError(f"{key}={value!r} is not allowed with profile 'tensorrt': {why}")


def check_layer_bits(profile: str, layer_bits: Mapping[str, int] | None) -> None:
    """Refuse per-layer weight bits (``layer_w_bits``, a mixed-precision allocation) the profile
    does not take, naming the first such layer."""
    if profile != TENSORRT:
        return
    for name, bits in (layer_bits or {}).items():
        if bits != TENSORRT_BITS:
            raise _refuse(f"layer_w_bits[{name!r}]", bits, _WHY["w"])


def check_mixed_bits(profile: str, bit_list: list[int] | None) -> None:
    """Refuse a mixed-precision bit list (``mixed.bit_list``, None: off) with a width the
    profile does not take, before the allocation runs."""
    if profile == TENSORRT and any(b != TENSORRT_BITS for b in bit_list or ()):
        raise _refuse("mixed.bit_list", bit_list, _WHY["w"])


def check_profile(config: Any) -> None:
    """Refuse, as one QuantConfigError naming the key, the value and why, a setting of
    ``config`` (a ``QuantConfig`` whose bits are already checked) its profile does not take."""
    if config.profile != TENSORRT:
        return
    for key in ("w_bits", "first_layer_w_bits", "last_layer_w_bits"):
        if getattr(config, key) != TENSORRT_BITS:
            raise _refuse(key, getattr(config, key), _WHY["w"])
    for key in ("a_bits", "first_layer_a_bits", "last_layer_a_bits"):
        if getattr(config, key) != TENSORRT_BITS:
            raise _refuse(key, getattr(config, key), _WHY["a"])
    check_layer_bits(config.profile, config.layer_w_bits)
    if not config.w_per_channel:
        raise _refuse("w_per_channel", False, "the profile quantizes weights per output channel "
                      "(axis 0, one scale per filter, as TensorRT's INT8 weights); drop the key "
                      "or set it true")
    if config.act_border != "nearest":
        raise _refuse("act_border", config.act_border,
                      "a learned border exports as a per-channel float affine and a Clip before "
                      "each QuantizeLinear, not the plain INT8 Q/DQ TensorRT fuses into "
                      "Conv/Gemm; use 'nearest'")
