"""Whatever a Python user hands over as data, turned into what the pipeline needs.

``calibration_images`` gives one float tensor of calibration images, ``evaluation_batches``
where evaluation batches come from, ``split_batch`` the images and class labels of one batch.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> loader = DataLoader(TensorDataset(torch.rand(10, 3, 8, 8), torch.arange(10)), batch_size=4)
>>> calibration_images(loader, size=6).shape
torch.Size([6, 3, 8, 8])
>>> images, labels = split_batch(next(iter(loader)))
>>> labels.tolist()
[0, 1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .modules import CalibrationDataModule, DataError

IMAGE_KEYS = ("image", "images", "input")  # where a dict batch holds its images, first found
LABEL_KEYS = ("label", "labels", "target", "targets")  # ... and its class labels
DATASET_BATCH = 256  # a map-style Dataset is read through a DataLoader of this batch size

CalibrationSource = Tensor | Iterable[Any] | pl.LightningDataModule
"""What ``calibration_images`` takes: see its docstring."""


def calibration_images(source: CalibrationSource, size: int | None = None, seed: int = 0) -> Tensor:
    """The calibration images of ``source`` as one float32 CPU tensor ``(N, ...)``, in a fixed
    order.

    ``source`` may be:

    - a Tensor of images ``(N, C, H, W)``, ``(N, C, L)`` or any ``(N, ...)`` with N first;
    - a ``DataLoader`` or any iterable of batches, each a tensor, a tuple/list whose first
      element is the image tensor (labels and the rest are ignored), or a dict holding the
      images under "image", "images" or "input";
    - a map-style ``Dataset`` (items are single samples: read through a DataLoader in index
      order, batches of 256);
    - our ``CalibrationDataModule`` (e.g. ``ImageFolderDataModule``): its seeded calibration
      set (``prepare_data()``, ``setup()``, then ``calib_set``);
    - any other ``LightningDataModule``: ``prepare_data()``, ``setup("fit")``, then the batches
      of its ``train_dataloader()``.

    ``size``: at most that many images, the first ones (fewer when the source holds fewer);
    None: all. ``seed`` seeds torch's random generator while the source is read, so a shuffling
    loader or a random augmentation gives the same images on every call (the caller's random
    state is left as it was). Images must already be floating point and normalised as the
    model expects: integer images (uint8 pixels) are refused, not guessed at; float16/bfloat16/
    float64 images are converted to float32.

    Raises DataError (one line) when the source holds no images, an item holds no tensor,
    shapes differ between batches, the images are not floating point, hold NaN or Inf, or an
    item has no batch dimension (a scalar or 1-D tensor).

    >>> calibration_images(torch.zeros(5, 1, 4, 4), size=2).shape
    torch.Size([2, 1, 4, 4])
    >>> calibration_images([(torch.ones(2, 3), 0), (torch.ones(2, 3), 1)]).shape
    torch.Size([4, 3])
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise DataError(f"calibration size={size!r} must be a positive number of images or None")
    if isinstance(source, Tensor):
        return _collect([source], size, "the tensor", single=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(source, CalibrationDataModule):
            source.prepare_data()
            source.setup()
            batches: Iterable[Any] = DataLoader(source.calib_set, batch_size=DATASET_BATCH)
            return _collect(batches, size, f"{type(source).__name__}'s calibration set")
        if isinstance(source, pl.LightningDataModule):
            return _collect(_train_batches(source), size, f"{type(source).__name__}")
        return _collect(_batches(source, "calibration_images"), size, "the source")


def evaluation_batches(source: Any) -> Iterable[Any] | None:
    """Where evaluation batches come from; None when ``source`` offers none.

    - our ``CalibrationDataModule``: its ``test_dataloader()``, None when it has no evaluation
      split (``has_eval_split`` False, e.g. ``ImageFolderDataModule(val_root=None)``);
    - any other ``LightningDataModule``: ``test_dataloader()`` if its class overrides it, else
      ``val_dataloader()`` if overridden (after ``prepare_data()`` and ``setup("test")`` /
      ``setup("validate")``), else None;
    - None: None;
    - a ``(images, labels)`` tuple/list of two tensors, float images ``(N, ...)`` and integer
      labels ``(N,)``: one batch, returned as ``[source]``;
    - a bare Tensor: one batch of images without labels, returned as ``[source]``;
    - a map-style ``Dataset``: a DataLoader over it in index order (batches of 256);
    - a DataLoader or any other iterable of batches: returned as is.

    >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    >>> [labels.tolist() for _, labels in evaluation_batches((x, y))]
    [[0, 1, 0, 1]]
    """
    if source is None:
        return None
    if isinstance(source, CalibrationDataModule):
        if not source.has_eval_split and not source.holdout:
            return None
        source.prepare_data()
        return source.test_dataloader()
    if isinstance(source, pl.LightningDataModule):
        for hook, stage in (("test_dataloader", "test"), ("val_dataloader", "validate")):
            if is_overridden(hook, source, pl.LightningDataModule):
                source.prepare_data()
                source.setup(stage)
                return getattr(source, hook)()
        return None
    if isinstance(source, Tensor):
        return [source]
    if _is_one_labelled_batch(source):
        return [source]
    return _batches(source, "evaluation_batches")


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """The images and integer class labels of one batch.

    A bare tensor has no labels; a tuple/list has its images first and its labels second; a
    dict has its images under "image"/"images"/"input" and its labels under "label"/"labels"/
    "target"/"targets". Labels are None unless they are an integer tensor of shape ``(N,)``
    (N = the number of images), and None when all of them are negative (-1 is this package's
    mark for an unlabelled image). DataError when the batch holds no image tensor.

    >>> split_batch((torch.zeros(2, 3), torch.tensor([4, 7])))[1].tolist()
    [4, 7]
    >>> split_batch(torch.zeros(2, 3))[1] is None
    True
    """
    images = _images_of(batch, "the batch")
    if isinstance(batch, (tuple, list)):
        labels = batch[1] if len(batch) > 1 else None
    elif isinstance(batch, Mapping):
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    else:
        labels = None
    if not _are_labels(labels, len(images)) or bool((labels < 0).all()):
        return images, None
    return images, labels


# helpers ------------------------------------------------------------------------------------
def _are_labels(labels: Any, count: int) -> bool:
    return (
        isinstance(labels, Tensor)
        and not labels.is_floating_point()
        and not labels.is_complex()
        and labels.dtype != torch.bool
        and tuple(labels.shape) == (count,)
    )


def _is_one_labelled_batch(source: Any) -> bool:
    if not isinstance(source, (tuple, list)) or len(source) != 2:
        return False
    images, labels = source
    return (
        isinstance(images, Tensor)
        and images.is_floating_point()
        and images.dim() >= 2
        and _are_labels(labels, len(images))
    )


def _batches(source: Any, caller: str) -> Iterable[Any]:
    """``source`` as an iterable of batches (a map-style Dataset read through a DataLoader)."""
    if isinstance(source, (str, bytes)):
        raise DataError(
            f"{caller} got a {type(source).__name__} ({source!r}); pass tensors, a DataLoader or "
            "a data module (for a folder of images: ImageFolderDataModule(train_root=...))"
        )
    if isinstance(source, Dataset) and not isinstance(source, IterableDataset):
        return DataLoader(source, batch_size=DATASET_BATCH)
    if not isinstance(source, Iterable):
        raise DataError(
            f"{caller} got a {type(source).__name__}: pass a tensor of images, a DataLoader or "
            "iterable of batches, or a LightningDataModule"
        )
    return source


def _train_batches(dm: pl.LightningDataModule) -> Iterator[Any]:
    if not is_overridden("train_dataloader", dm, pl.LightningDataModule):
        raise DataError(
            f"{type(dm).__name__} has no train_dataloader(): calibration images come from it"
        )
    dm.prepare_data()
    dm.setup("fit")
    yield from dm.train_dataloader()


def _images_of(item: Any, where: str) -> Tensor:
    """The image tensor of one batch, as the docstrings above describe."""
    if isinstance(item, Tensor):
        return item
    if isinstance(item, (tuple, list)):
        if not item:
            raise DataError(f"{where} is an empty {type(item).__name__}: it holds no images")
        if not isinstance(item[0], Tensor):
            raise DataError(
                f"{where} is a {type(item).__name__} whose first element is a "
                f"{type(item[0]).__name__}, not an image tensor"
            )
        return item[0]
    if isinstance(item, Mapping):
        key = next((k for k in IMAGE_KEYS if k in item), None)
        if key is None:
            raise DataError(
                f"{where} is a dict with keys {list(item)[:8]}: none of {list(IMAGE_KEYS)} "
                "holds its images"
            )
        if not isinstance(item[key], Tensor):
            raise DataError(f"{where}[{key!r}] is a {type(item[key]).__name__}, not a tensor")
        return item[key]
    raise DataError(
        f"{where} is a {type(item).__name__}, not a tensor, an (images, labels) tuple or a dict "
        f"with an {'/'.join(IMAGE_KEYS)} key"
    )


def _collect(batches: Iterable[Any], size: int | None, what: str, single: bool = False) -> Tensor:
    """Concatenate the images of ``batches`` (checked one by one), stopping at ``size``;
    ``single``: ``batches`` is one tensor, named ``what`` in errors."""
    kept: list[Tensor] = []
    count = 0
    first_shape: tuple[int, ...] | None = None
    for b, batch in enumerate(batches):
        if size is not None and count >= size:
            break
        where = what if single else f"batch {b} of {what}"
        images = _images_of(batch, where)
        if images.dim() < 2:
            raise DataError(
                f"{where} has shape {tuple(images.shape)}: images need a batch "
                "dimension first, (N, C, H, W) or (N, C, L)"
            )
        if not images.is_floating_point():
            raise DataError(
                f"{where} holds {images.dtype} images: convert them to float and normalise them "
                "as the model expects (e.g. x.float() / 255, then the mean/std it was trained on)"
            )
        if first_shape is None:
            first_shape = tuple(images.shape[1:])
        elif tuple(images.shape[1:]) != first_shape:
            raise DataError(
                f"images differ in shape: {what} gave {first_shape} first, {where} gives "
                f"{tuple(images.shape[1:])} (shapes without the batch dimension)"
            )
        if size is not None:
            images = images[: size - count]
        images = images.detach().to("cpu", torch.float32)
        if not torch.isfinite(images).all():
            raise DataError(f"{where} holds NaN or Inf")
        kept.append(images)
        count += len(images)
    if count == 0:
        raise DataError(f"{what} holds no images")
    return torch.cat(kept)
