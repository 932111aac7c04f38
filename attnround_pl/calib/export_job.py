"""The export job: a finished run folder -> state file or ONNX model, checked against PyTorch.

Used by ``attnround-pl export``; the export itself is in ``attnround_pl.export``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import onnxruntime
from rich.table import Table
from torch import nn

from ..atomic import write_json
from ..data import calibration_images, evaluation_batches, split_batch
from ..export import (
    CodeDivergence,
    compare_with_onnx,
    export_onnx,
    export_state,
    load_state,
    max_output_difference,
)
from ..export.metadata import export_meta
from ..quant import load_quantized
from .run_folder import CHECKPOINT, REPORT, build_float, check_run_folder
from .settings import FORMATS, check_format


def export_run(
    run_dir: str | os.PathLike, fmt: str, data: Any, out: str | os.PathLike | None = None,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Export a finished run, compare the export with the PyTorch model on the evaluation data
    (the calibration images when ``data`` has none), add the comparison to report.json and
    return it. ``model``: the float model object, for a run whose model cannot be rebuilt from
    its checkpoint (one passed as an object from Python). Both formats record the checkpoint's
    preprocessing and class count (see ``export.metadata``)."""
    check_format(fmt)
    run_dir = check_run_folder(run_dir, need_config=False)
    out = Path(out) if out is not None else run_dir / FORMATS[fmt]

    def rebuild(meta: dict[str, Any]) -> nn.Module:
        return build_float(meta, model)

    qmodel, payload = load_quantized(run_dir / CHECKPOINT, rebuild)
    if isinstance(data, pl.LightningDataModule):
        data.prepare_data()
        data.setup("test")
    loader = evaluation_batches(data)
    if loader is None:
        loader = list(calibration_images(data).split(256))
    example = split_batch(next(iter(loader)))[0][:1]
    meta = export_meta(payload["meta"], example=example)  # an old checkpoint: the input shape
    if fmt == "onnx":
        export_onnx(qmodel, example, out, meta)
        cmp = compare_with_onnx(qmodel, out, loader)
        result = {"onnx_path": str(out), "onnx_top1": cmp.onnx_top1,
                  "onnx_argmax_mismatch": cmp.argmax_mismatch, "onnx_torch_top1": cmp.torch_top1,
                  "onnx_max_abs_logit_diff": cmp.max_abs_logit_diff, "onnx_images": cmp.images,
                  "onnx_code_divergence": cmp.as_dict()["divergence"],
                  "onnxruntime": onnxruntime.__version__}
    else:
        export_state(qmodel, out, payload["quant"], meta)
        reloaded, _ = load_state(out, rebuild)
        images, diff = max_output_difference(qmodel, reloaded, loader)
        result = {"state_path": str(out), "state_max_abs_diff": diff, "state_images": images}
    report = json.loads((run_dir / REPORT).read_text())
    report.update(result)
    write_json(run_dir / REPORT, report)
    return result


def export_table(result: dict[str, Any]) -> Table:
    """PyTorch fake-quant and exported model side by side (top-1 where the data has labels)."""
    if "onnx_path" in result:
        table = Table(title=f"{result['onnx_path']} on {result['onnx_images']} images")
        labelled = result.get("onnx_top1") is not None
        columns = ["PyTorch top-1 %", "onnxruntime top-1 %", "differing argmax"] if labelled else []
        for col in (*columns, "max |output diff|"):
            table.add_column(col, justify="right")
        cells = []
        if labelled:
            cells = [f"{result['onnx_torch_top1']:.2f}", f"{result['onnx_top1']:.2f}",
                     str(result["onnx_argmax_mismatch"])]
        table.add_row(*cells, f"{result['onnx_max_abs_logit_diff']:.3g}")
        div = result.get("onnx_code_divergence")
        if div is not None:
            table.caption = CodeDivergence(**div).explain()
        elif result["onnx_max_abs_logit_diff"] > 0:
            table.caption = (
                "every activation code agrees on the images that differ most: "
                "the outputs differ by float summation order only"
            )
        return table
    table = Table(title=f"{result['state_path']}: reloaded vs calibrated model")
    table.add_column("images", justify="right")
    table.add_column("max |output diff|", justify="right")
    table.add_row(str(result["state_images"]), f"{result['state_max_abs_diff']:.3g}")
    return table
