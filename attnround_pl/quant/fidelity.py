"""How close a quantized model's values are to the float model's, for any output.

Three numbers over a set of samples, each comparing a reference ``ref`` (float model) with the
quantized model's ``test`` of the same shape:

- SQNR in dB: ``10 log10(sum ref^2 / sum (test - ref)^2)`` over every element (inf when equal);
- cosine similarity: the mean over samples of the cosine between the flattened ``ref[i]`` and
  ``test[i]`` (1 when both are zero);
- the largest absolute difference of any element.

``FidelityStats`` holds the sums, so batches (and DDP ranks) add up before the ratio is taken.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Fidelity:
    """SQNR (dB), mean per-sample cosine similarity and max absolute difference."""

    sqnr_db: float
    cosine: float
    max_abs_diff: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class FidelityStats:
    """Running sums of one comparison; ``add`` a batch, ``result()`` at the end."""

    signal: float = 0.0
    noise: float = 0.0
    cosine_sum: float = 0.0
    samples: int = 0
    max_abs_diff: float = 0.0

    @torch.no_grad()
    def add(self, ref: Tensor, test: Tensor) -> FidelityStats:
        if ref.shape != test.shape:
            raise ValueError(f"cannot compare shapes {tuple(ref.shape)} and {tuple(test.shape)}")
        ref, test = ref.detach().double(), test.detach().double()
        diff = test - ref
        self.signal += float(ref.square().sum())
        self.noise += float(diff.square().sum())
        self.max_abs_diff = max(self.max_abs_diff, float(diff.abs().max()) if diff.numel() else 0)
        self.cosine_sum += float(cosine_per_sample(ref, test).sum())
        self.samples += ref.shape[0] if ref.dim() else 1
        return self

    def merge(self, other: FidelityStats) -> FidelityStats:
        self.signal += other.signal
        self.noise += other.noise
        self.cosine_sum += other.cosine_sum
        self.samples += other.samples
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)
        return self

    def result(self) -> Fidelity:
        if self.samples == 0:
            raise ValueError("no samples were compared")
        return Fidelity(
            sqnr_db=sqnr_db(self.signal, self.noise),
            cosine=self.cosine_sum / self.samples,
            max_abs_diff=self.max_abs_diff,
            samples=self.samples,
        )


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``; inf for no noise, -inf for no signal but noise."""
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine_per_sample(ref: Tensor, test: Tensor) -> Tensor:
    """Cosine similarity of each sample's flattened values (1 where both are all zero, 0 where
    only one is)."""
    a = ref.reshape(ref.shape[0], -1) if ref.dim() else ref.reshape(1, 1)
    b = test.reshape(a.shape)
    dot = (a * b).sum(1)
    norms = a.norm(dim=1) * b.norm(dim=1)
    both_zero = (a.abs().sum(1) == 0) & (b.abs().sum(1) == 0)
    cos = torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def output_tensors(output: object) -> dict[str, Tensor]:
    """A model's output as named tensors: a tensor is 'output', a dict keeps its keys."""
    if isinstance(output, Tensor):
        return {"output": output}
    if isinstance(output, dict) and output and all(isinstance(v, Tensor) for v in output.values()):
        return {str(k): v for k, v in output.items()}
    raise TypeError(
        f"the model returned {type(output).__name__}: attnround-pl takes models that return "
        "one tensor or a dict of tensors"
    )
