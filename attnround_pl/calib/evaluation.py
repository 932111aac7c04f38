"""Evaluation of any model on the evaluation data, through ``Trainer.test``.

``ModelEvaluation`` (a LightningModule) runs the model under test and, when given, the float
reference on the same batches. It reports fidelity against the reference for every output
(SQNR, cosine, max absolute difference; see ``quant.fidelity``) and, when the batches carry
integer class labels and the model returns (N, classes) logits, top-1, and top-5 when there are
more than five classes. Its sums are
torchmetrics states, so DDP ranks add up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MaxMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from ..data import split_batch
from ..errors import InputError
from ..quant.fidelity import Fidelity, FidelityStats, output_tensors

_SUMS = ("signal", "noise", "cosine_sum", "samples")


# Top-5 of five classes or fewer is 100 % whatever the model does: it is left out there.
TOP5_MIN_CLASSES = 5


class EvaluationError(InputError, RuntimeError):
    """The evaluation data does not fit the model (labels out of range, no batches)."""


@dataclass
class EvalResult:
    """Top-1/top-5 in percent (None without labels or logits; top-5 None for five classes or
    fewer) and fidelity per output."""

    images: int
    top1: float | None = None
    top5: float | None = None
    fidelity: dict[str, Fidelity] = field(default_factory=dict)

    def fidelity_dict(self) -> dict[str, dict[str, float]]:
        return {name: f.to_dict() for name, f in self.fidelity.items()}


def classes_of(output: object) -> int | None:
    """The number of classes when ``output`` is (N, classes) logits, else None."""
    return int(output.shape[1]) if isinstance(output, Tensor) and output.dim() == 2 else None


class ModelEvaluation(pl.LightningModule):
    """``trainer.test`` of ``net`` (and of ``reference`` beside it, for fidelity)."""

    def __init__(
        self,
        net: nn.Module,
        reference: nn.Module | None,
        classes: int | None,
        outputs: Iterable[str] = ("output",),
    ) -> None:
        super().__init__()
        self.net = net
        self.reference = reference
        self.classes = classes
        self.outputs = list(outputs)
        self.top1 = self.top5 = None
        if classes is not None:
            self.top1 = MulticlassAccuracy(classes, top_k=1, average="micro")
        if classes is not None and classes > TOP5_MIN_CLASSES:
            self.top5 = MulticlassAccuracy(classes, top_k=5, average="micro")
        self.images = SumMetric()
        self.labelled = SumMetric()
        compared = self.outputs if reference is not None else []
        self.sums = nn.ModuleDict({f"{o}__{n}": SumMetric() for o in compared for n in _SUMS})
        self.max_diff = nn.ModuleDict({o: MaxMetric() for o in compared})

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = split_batch(batch)
        out = output_tensors(self.net(x))
        self.images.update(x.shape[0])
        if self.top1 is not None and y is not None:
            logits = out["output"]
            if int(y.min()) < 0 or int(y.max()) >= self.classes:
                raise EvaluationError(
                    f"evaluation labels span {int(y.min())}..{int(y.max())} but the model has "
                    f"{self.classes} outputs"
                )
            self.top1.update(logits, y)
            if self.top5 is not None:
                self.top5.update(logits, y)
        self.labelled.update(x.shape[0] if self.top1 is not None and y is not None else 0)
        if self.reference is None:
            return
        ref = output_tensors(self.reference(x))
        for name in self.outputs:
            stats = FidelityStats().add(ref[name], out[name])
            for key in _SUMS:
                self.sums[f"{name}__{key}"].update(torch.tensor(float(getattr(stats, key))))
            self.max_diff[name].update(torch.tensor(stats.max_abs_diff))

    def result(self) -> EvalResult:
        images = int(self.images.compute())
        if images == 0:
            raise EvaluationError("the evaluation data holds no images")
        result = EvalResult(images)
        if self.top1 is not None and int(self.labelled.compute()) > 0:
            result.top1 = 100.0 * float(self.top1.compute())
            if self.top5 is not None:
                result.top5 = 100.0 * float(self.top5.compute())
        for name in self.max_diff:
            sums = {k: float(self.sums[f"{name}__{k}"].compute()) for k in _SUMS}
            stats = FidelityStats(
                sums["signal"],
                sums["noise"],
                sums["cosine_sum"],
                int(sums["samples"]),
                float(self.max_diff[name].compute()),
            )
            result.fidelity[name] = stats.result()
        return result


def evaluate_model(
    net: nn.Module,
    batches: Iterable[Any],
    trainer_kwargs: dict[str, Any] | None = None,
    reference: nn.Module | None = None,
    progress: bool = False,
) -> EvalResult:
    """Top-1/top-5 (with labels and logits) and fidelity against ``reference`` of ``net`` on
    ``batches`` (a DataLoader, or any iterable of image tensors or (images, labels) pairs)."""
    if not isinstance(batches, DataLoader):  # Lightning would read a list as several loaders
        batches = DataLoader(list(batches), batch_size=None)
    first = next(iter(batches), None)
    if first is None:
        raise EvaluationError("the evaluation data holds no images")
    x, _ = split_batch(first)
    with torch.no_grad():
        out = net(x[:2].to(next(net.parameters()).device))
    module = ModelEvaluation(net, reference, classes_of(out), list(output_tensors(out)))
    trainer = pl.Trainer(
        **(trainer_kwargs or {}),
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    trainer.test(module, dataloaders=batches, verbose=False)
    return module.result()
