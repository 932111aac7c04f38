"""What an exported model records about its input and output, for whoever runs it elsewhere.

The checkpoint's meta holds ``"preprocessing"`` (see ``attnround_pl.data.Preprocessing``:
``input_shape``, ``channel_order``, ``mean``, ``std``, ``pixel_range``, ``resize``, ``crop``,
``transform``) and ``"num_classes"`` (None when the output is not logits). The state file keeps
them in its ``meta``; the ONNX model in its ``metadata_props``, one entry per key named
``attnround_pl.<key>`` with a JSON value, plus ``attnround_pl.input_name`` (the graph input).
A checkpoint written before they were recorded exports with what is known: the input shape of
the export's example batch.

>>> import torch
>>> meta = export_meta({"num_classes": 10}, example=torch.zeros(1, 1, 28, 28))
>>> meta["preprocessing"]
{'input_shape': [1, 28, 28]}
>>> onnx_metadata(meta, "input")["attnround_pl.input_shape"]
'[1, 28, 28]'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import onnx
from torch import Tensor, nn

METADATA_PREFIX = "attnround_pl."


def _as_dict(preprocessing: Any) -> dict[str, Any] | None:
    """A ``Preprocessing`` (anything with ``to_dict``) or a mapping as a plain dict."""
    if preprocessing is None:
        return None
    if hasattr(preprocessing, "to_dict"):
        return preprocessing.to_dict()
    return dict(preprocessing)


def export_meta(
    meta: Mapping[str, Any] | None, qmodel: nn.Module | None = None, example: Tensor | None = None
) -> dict[str, Any]:
    """``meta`` (a checkpoint's) completed with what the export knows: ``"preprocessing"``
    (from ``meta``, else ``qmodel.preprocessing`` as ``attnround_pl.quantize`` / ``load`` set
    it; its ``input_shape``, when not recorded, from ``example``, one input batch) and
    ``"num_classes"`` (from ``meta``, else ``qmodel.output_classes``). Unknown: None."""
    out = dict(meta or {})
    preprocessing = _as_dict(out.get("preprocessing"))
    if preprocessing is None and qmodel is not None:
        preprocessing = _as_dict(getattr(qmodel, "preprocessing", None))
    preprocessing = dict(preprocessing or {})
    if preprocessing.get("input_shape") is None and example is not None and example.dim() > 1:
        preprocessing["input_shape"] = list(example.shape[1:])
    out["preprocessing"] = preprocessing or None
    if out.get("num_classes") is None and qmodel is not None:
        out["num_classes"] = getattr(qmodel, "output_classes", None)
    out.setdefault("num_classes", None)
    return out


def onnx_metadata(meta: Mapping[str, Any], input_name: str) -> dict[str, str]:
    """The ``metadata_props`` entries of an export's meta (see ``export_meta``): every
    preprocessing key, ``num_classes`` and ``input_name``, prefixed, values as JSON."""
    values = {**(meta.get("preprocessing") or {}), "num_classes": meta.get("num_classes"),
              "input_name": input_name}
    return {f"{METADATA_PREFIX}{key}": json.dumps(value) for key, value in values.items()}


def set_onnx_metadata(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    """Write ``entries`` into ``model.metadata_props``, replacing earlier entries of ours."""
    kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def read_onnx_metadata(model: onnx.ModelProto | str | os.PathLike) -> dict[str, Any]:
    """What an exported ONNX model records (``attnround_pl.*`` entries, prefix dropped, JSON
    decoded), e.g. ``{"input_shape": [1, 28, 28], "mean": [0.286], ..., "num_classes": 10}``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_model(os.fspath(model), load_external_data=False)
    return {
        p.key.removeprefix(METADATA_PREFIX): json.loads(p.value)
        for p in model.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }
