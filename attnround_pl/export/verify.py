"""Run an exported ONNX model in onnxruntime beside the PyTorch model and compare predictions."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from ..errors import SettingError
from .qdq_onnx import INPUT_NAME


@dataclass
class Comparison:
    """Top-1 (percent) of both models on the same images, and how their predictions differ."""

    images: int
    torch_top1: float
    onnx_top1: float
    argmax_mismatch: int
    max_abs_logit_diff: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def onnx_session(path: str | os.PathLike) -> ort.InferenceSession:
    """A CPU onnxruntime session with the default graph optimizations (what a deployment gets)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_with_onnx(
    qmodel: nn.Module, onnx_path: str | os.PathLike, batches: Iterable[tuple[Tensor, Tensor]]
) -> Comparison:
    """Evaluate ``qmodel`` (PyTorch) and the ONNX file on the same labelled batches."""
    session = onnx_session(onnx_path)
    device = next(qmodel.parameters()).device
    qmodel = qmodel.eval()
    images = torch_correct = onnx_correct = mismatch = 0
    max_diff = 0.0
    for x, y in batches:
        ref = qmodel(x.to(device)).float().cpu()
        (out,) = session.run(None, {INPUT_NAME: x.cpu().numpy().astype(np.float32)})
        got = torch.from_numpy(out)
        images += len(y)
        torch_correct += int((ref.argmax(1) == y).sum())
        onnx_correct += int((got.argmax(1) == y).sum())
        mismatch += int((ref.argmax(1) != got.argmax(1)).sum())
        max_diff = max(max_diff, float((ref - got).abs().max()))
    if images == 0:
        raise SettingError("no images to compare the ONNX model on")
    return Comparison(
        images=images,
        torch_top1=100.0 * torch_correct / images,
        onnx_top1=100.0 * onnx_correct / images,
        argmax_mismatch=mismatch,
        max_abs_logit_diff=max_diff,
    )


@torch.no_grad()
def max_output_difference(
    a: nn.Module, b: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[int, float]:
    """(images, largest absolute output difference) of two models on the same batches."""
    device = next(a.parameters()).device
    images, diff = 0, 0.0
    for x, _ in batches:
        x = x.to(device)
        diff = max(diff, float((a.eval()(x) - b.eval()(x)).abs().max()))
        images += len(x)
    return images, diff
