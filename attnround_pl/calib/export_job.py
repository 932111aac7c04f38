"""The export job: a finished run folder -> state file or ONNX model, checked against PyTorch.

Used by ``attnround-pl export``; the export itself is in ``attnround_pl.export``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import onnxruntime
from rich.table import Table
from torch import nn

from ..data import calibration_images, evaluation_batches, split_batch
from ..export import (
    CodeDivergence,
    compare_with_onnx,
    export_onnx,
    export_state,
    load_state,
    max_output_difference,
    onnx_size,
    state_size,
)
from ..export.checkpoint import load_quantized
from ..export.metadata import export_meta
from ..export.tensorrt_check import check_tensorrt_graph
from .report import OnnxCheck, Report, StateCheck
from .run_folder import CHECKPOINT, REPORT, build_float, check_run_folder
from .settings import FORMATS, check_format


def export_run(
    run_dir: str | os.PathLike, fmt: str, data: Any, out: str | os.PathLike | None = None,
    model: nn.Module | None = None, opset: int | None = None,
) -> OnnxCheck | StateCheck:
    """Export a finished run, compare the export with the PyTorch model on the evaluation data
    (the calibration images when ``data`` has none), add the comparison to report.json and
    return it. ``model``: the float model object, for a run whose model cannot be rebuilt from
    its checkpoint (one passed as an object from Python). Both formats record the checkpoint's
    preprocessing and class count (see ``export.metadata``). ``opset``: the ONNX opset (None:
    the lowest that holds the model's bit widths, see ``export.qdq_onnx``)."""
    began = time.perf_counter()
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
        export_onnx(qmodel, example, out, meta, opset=opset)
        cmp = compare_with_onnx(qmodel, out, loader)
        size = onnx_size(out)
        trt = None
        if payload["quant"].get("profile") == "tensorrt":  # the rules it was quantized for
            trt = check_tensorrt_graph(out)
        result = OnnxCheck(
            path=str(out), top1=cmp.onnx_top1, argmax_mismatch=cmp.argmax_mismatch,
            torch_top1=cmp.torch_top1, max_abs_logit_diff=cmp.max_abs_logit_diff,
            images=cmp.images, code_divergence=cmp.as_dict()["divergence"],
            onnxruntime=onnxruntime.__version__, opset=size.opset,
            file_bytes=size.file_bytes, weight_code_bytes=size.weight_code_bytes,
            tensorrt_violations=None if trt is None else trt.counts("violations"),
            tensorrt_warnings=None if trt is None else trt.counts("warnings"),
        )
    else:
        export_state(qmodel, out, payload["quant"], meta)
        reloaded, _ = load_state(out, rebuild)
        images, diff = max_output_difference(qmodel, reloaded, loader)
        size = state_size(out)
        result = StateCheck(path=str(out), max_abs_diff=diff, images=images,
                            file_bytes=size.file_bytes, weight_code_bytes=size.weight_code_bytes)
    result.seconds = round(time.perf_counter() - began, 2)
    report = Report.read(run_dir / REPORT)
    report.add_check(result)
    report.write(run_dir / REPORT)
    return result


def _tensorrt_cell(result: OnnxCheck) -> str:
    """``passed`` or the violations by rule, and the residual-add warnings' count."""
    bad = result.tensorrt_violations or {}
    text = "passed" if not bad else ", ".join(f"{k} x{v}" for k, v in bad.items())
    warned = sum((result.tensorrt_warnings or {}).values())
    return text + (f" ({warned} warning{'s' if warned != 1 else ''})" if warned else "")


def _took(result: OnnxCheck | StateCheck) -> str:
    """", export and check in N s" (nothing for a check without its time)."""
    return "" if result.seconds is None else f", export and check in {result.seconds:.0f} s"


def export_table(result: OnnxCheck | StateCheck) -> Table:
    """PyTorch fake-quant and exported model side by side (top-1 where the data has labels)."""
    if isinstance(result, OnnxCheck):
        size = ("" if result.file_bytes is None else
                f" (opset {result.opset}: {result.file_bytes / 1024:.1f} KiB, weight codes "
                f"{result.weight_code_bytes / 1024:.1f} KiB)")
        table = Table(title=f"{result.path}{size} on {result.images} images{_took(result)}")
        labelled = result.top1 is not None
        columns = ["PyTorch top-1 %", "onnxruntime top-1 %", "differing argmax"] if labelled else []
        for col in (*columns, "max |output diff|"):
            table.add_column(col, justify="right")
        cells = []
        if labelled:
            cells = [f"{result.torch_top1:.2f}", f"{result.top1:.2f}",
                     str(result.argmax_mismatch)]
        cells.append(f"{result.max_abs_logit_diff:.3g}")
        if result.tensorrt_violations is not None:
            table.add_column("TensorRT rules", justify="right")
            cells.append(_tensorrt_cell(result))
        table.add_row(*cells)
        if result.code_divergence is not None:
            table.caption = CodeDivergence(**result.code_divergence).explain()
        elif result.max_abs_logit_diff > 0:
            table.caption = (
                "every activation code agrees on the images that differ most: "
                "the outputs differ by float summation order only"
            )
        return table
    size = ("" if result.file_bytes is None else
            f" ({result.file_bytes / 1024:.1f} KiB, weight codes "
            f"{result.weight_code_bytes / 1024:.1f} KiB)")
    table = Table(title=f"{result.path}{size}: reloaded vs calibrated model{_took(result)}")
    table.add_column("images", justify="right")
    table.add_column("max |output diff|", justify="right")
    table.add_row(str(result.images), f"{result.max_abs_diff:.3g}")
    return table
