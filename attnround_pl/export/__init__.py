"""Export of a frozen quantized model: the integer state file and the ONNX QDQ graph.

Plain PyTorch + onnx/onnxruntime; no Lightning.
"""

from .qdq_onnx import OPSET, OnnxExportError, export_onnx, to_onnx
from .state import STATE_FORMAT, export_state, load_state, read_state, state_payload
from .verify import Comparison, compare_with_onnx, max_output_difference, onnx_session

__all__ = [
    "OPSET",
    "STATE_FORMAT",
    "Comparison",
    "OnnxExportError",
    "compare_with_onnx",
    "export_onnx",
    "export_state",
    "load_state",
    "max_output_difference",
    "onnx_session",
    "read_state",
    "state_payload",
    "to_onnx",
]
