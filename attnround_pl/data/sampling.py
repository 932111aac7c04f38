"""Seeded, class-balanced choice of calibration images."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import SettingError


def balanced_indices(targets: Sequence[int], size: int, seed: int) -> list[int]:
    """``size`` indices, as equal a share per class as possible, chosen with ``seed``.

    Classes are taken in label order; the first ``size % classes`` classes get one more.
    Raises SettingError (a ValueError) when the data set holds fewer images than asked for,
    overall or in a class.
    """
    labels = torch.as_tensor(list(targets))
    if size <= 0:
        raise SettingError(f"calibration size must be positive, got {size}")
    if size > labels.numel():
        raise SettingError(
            f"asked for {size} calibration images, the data set holds {labels.numel()}"
        )
    classes = torch.unique(labels).tolist()
    base, extra = divmod(size, len(classes))
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for i, cls in enumerate(classes):
        want = base + (1 if i < extra else 0)
        members = torch.nonzero(labels == cls).flatten()
        if want > members.numel():
            raise SettingError(
                f"class {cls} has {members.numel()} images, {want} needed for a balanced "
                f"calibration set of {size}"
            )
        chosen += members[torch.randperm(members.numel(), generator=gen)[:want]].tolist()
    return sorted(chosen)
