"""Export of a frozen quantized model: the integer state file and the ONNX QDQ graph.

Plain PyTorch + onnx/onnxruntime; no Lightning.
"""

from .metadata import read_onnx_metadata
from .qdq_onnx import OPSET, OnnxExportError, export_onnx, to_onnx
from .state import STATE_FORMAT, export_state, load_state, read_state, state_payload
from .verify import (
    CodeDivergence,
    Comparison,
    compare_with_onnx,
    first_code_divergence,
    max_output_difference,
    onnx_session,
)

__all__ = [
    "OPSET",
    "STATE_FORMAT",
    "CodeDivergence",
    "Comparison",
    "OnnxExportError",
    "compare_with_onnx",
    "export_onnx",
    "export_state",
    "first_code_divergence",
    "load_state",
    "max_output_difference",
    "onnx_session",
    "read_onnx_metadata",
    "read_state",
    "state_payload",
    "to_onnx",
]
