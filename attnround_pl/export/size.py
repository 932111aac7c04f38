"""The size of an exported model and where its bytes go: integer weight codes against the rest.

ONNX (``onnx_size``):
A weight code initializer is one that a DequantizeLinear dequantizes (its first input); the
activation codes are computed at run time, so every other initializer (scales, zero points,
float biases, clip limits, AQuant border constants, BatchNorm and other float parameters) and
the graph itself count as the rest. At opset 21 a grid of 4 bits or fewer is stored 4 bits a
code (two codes a byte), at opset 18 one code a byte (see ``qdq_onnx``). The state file
(``state_size``) packs every layer's codes at its own bit width (see ``packing``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx


@dataclass(frozen=True)
class _Bytes:
    """A file's bytes with its weight codes apart."""

    file_bytes: int
    weight_code_bytes: int
    weight_codes: int

    @property
    def other_bytes(self) -> int:
        return self.file_bytes - self.weight_code_bytes

    @property
    def bits_per_weight_code(self) -> float:
        """Stored bits per weight code (0 without any)."""
        return 8 * self.weight_code_bytes / self.weight_codes if self.weight_codes else 0.0


@dataclass(frozen=True)
class OnnxSize(_Bytes):
    """Bytes of an ONNX model.

    ``file_bytes``: the model file (a model in memory: its serialized size, what
    ``onnx.save_model`` writes). ``weight_code_bytes``: the stored data of the weight code
    initializers, ``weight_codes`` how many codes they hold, ``code_bytes_by_type`` the bytes
    per ONNX element type (``"uint4"``, ``"int8"``, ...). ``other_bytes``: the rest of the file
    (other initializers, graph, metadata). ``opset``: the default domain's opset version."""

    code_bytes_by_type: dict[str, int] = field(default_factory=dict)
    opset: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"other_bytes": self.other_bytes,
                               "bits_per_weight_code": self.bits_per_weight_code}


def _stored_bytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's data: its raw data, or its typed field as serialized."""
    if t.raw_data:
        return len(t.raw_data)
    empty = onnx.TensorProto()
    empty.CopyFrom(t)
    empty.ClearField("int32_data")
    empty.ClearField("int64_data")
    empty.ClearField("uint64_data")
    empty.ClearField("float_data")
    empty.ClearField("double_data")
    return t.ByteSize() - empty.ByteSize()


def onnx_size(path_or_model: str | os.PathLike | onnx.ModelProto) -> OnnxSize:
    """The size of an ONNX model file (or of a model in memory once saved) with its weight
    code bytes apart (see ``OnnxSize``). A file with external data counts the .onnx file
    only."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, file_bytes = path_or_model, path_or_model.ByteSize()
    else:
        model = onnx.load(str(path_or_model), load_external_data=False)
        file_bytes = os.path.getsize(path_or_model)
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    by_type: dict[str, int] = {}
    codes = 0
    for t in model.graph.initializer:
        if t.name in dequantized:
            kind = onnx.helper.tensor_dtype_to_string(t.data_type).removeprefix("TensorProto.")
            by_type[kind.lower()] = by_type.get(kind.lower(), 0) + _stored_bytes(t)
            codes += int(np.prod(t.dims, dtype=np.int64))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return OnnxSize(file_bytes=file_bytes, weight_code_bytes=sum(by_type.values()),
                    weight_codes=codes, code_bytes_by_type=by_type, opset=opset)


@dataclass(frozen=True)
class StateSize(_Bytes):
    """Bytes of a state file (``export.state``): ``file_bytes`` the file, ``weight_code_bytes``
    its packed weight codes (``{layer}.weight_codes``), ``weight_codes`` how many codes they
    hold; ``other_bytes`` the rest (scales, zero points, biases, borders, the JSON header)."""


def state_size(path: str | os.PathLike) -> StateSize:
    """The size of a safetensors state file with its weight code bytes apart, read from the
    file's header only (see ``StateSize``)."""
    import json

    with open(path, "rb") as f:
        index = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header = json.loads(index.pop("__metadata__")["attnround_pl"])
    code_bytes = sum(end - start for key, entry in index.items()
                     if key.endswith(".weight_codes")
                     for start, end in [entry["data_offsets"]])
    codes = sum(int(np.prod(layer["shape"], dtype=np.int64))
                for layer in header["layers"].values())
    return StateSize(file_bytes=os.path.getsize(path), weight_code_bytes=code_bytes,
                     weight_codes=codes)
