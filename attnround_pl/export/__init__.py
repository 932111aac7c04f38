"""File formats of a quantized model and their export: the quantized checkpoint
(``checkpoint``: ``save_quantized``/``load_quantized``, a run folder's ``quantized.pt``), the
integer state file (``state``, codes packed by ``packing``) and the ONNX QDQ graph
(``qdq_onnx``), checked against PyTorch (``verify``) and, for ``quant.profile: tensorrt``,
against TensorRT's rules (``tensorrt_check``).

Plain PyTorch + onnx/onnxruntime; no Lightning. The names below are imported from their modules
on first use, so reading a checkpoint does not load onnx.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "checkpoint": ["CheckpointError", "load_quantized", "read_quantized", "save_quantized"],
    "metadata": ["read_onnx_metadata"],
    "qdq_onnx": [
        "INT4_OPSET",
        "OPSET",
        "OPSETS",
        "OnnxExportError",
        "check_opset",
        "container_bits",
        "default_opset",
        "export_onnx",
        "to_onnx",
    ],
    "size": ["OnnxSize", "StateSize", "onnx_size", "state_size"],
    "packing": ["pack_codes", "unpack_codes"],
    "state": [
        "STATE_FORMAT", "TORCH_STATE_FORMAT", "export_state", "load_state", "read_state",
        "state_payload",
    ],
    "tensorrt_check": ["Finding", "TensorRTCheck", "check_tensorrt_graph"],
    "verify": [
        "CodeDivergence",
        "Comparison",
        "EXACT_INT8_OPTION",
        "compare_with_onnx",
        "first_code_divergence",
        "max_output_difference",
        "onnx_session",
    ],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
