"""What a model's input must look like: the preprocessing its calibration data applied.

A saved or exported model records it (checkpoint meta ``"preprocessing"``, the ONNX model's
``metadata_props``), so whoever runs the model elsewhere turns an image file into the same
input the model was calibrated on.

>>> p = Preprocessing(input_shape=(1, 28, 28), channel_order="L", mean=(0.286,), std=(0.353,),
...                   pixel_range=(0.0, 1.0))
>>> p.transform
'convert to L -> ToTensor (pixels / 255) -> Normalize(mean, std)'
>>> Preprocessing.from_dict(p.to_dict()) == p
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from .modules import (
    FMNIST_MEAN,
    FMNIST_STD,
    DataError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
)

CHANNEL_ORDERS = {"RGB": 3, "L": 1}  # PIL's mode names: red, green, blue / grayscale (luma)
TO_TENSOR_RANGE = (0.0, 1.0)  # torchvision's ToTensor: 8-bit pixels / 255


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes one input of the model (None: not known).

    - ``input_shape``: one input as calibrated, ``(C, H, W)`` for images;
    - ``channel_order``: ``"RGB"`` (3 channels) or ``"L"`` (1 channel, grayscale by PIL's luma);
    - ``pixel_range``: the range 8-bit pixels are scaled to before normalising
      (``(0.0, 1.0)``: torchvision's ToTensor, pixels / 255);
    - ``mean``, ``std``: per channel, in those pixel units: ``input = (pixels - mean) / std``;
    - ``resize``: first the shorter side is resized to this many pixels (bilinear);
    - ``crop``: then the centre ``crop x crop`` square is kept.

    Raises DataError (one line) when the values contradict each other or are out of range.
    """

    input_shape: tuple[int, ...] | None = None
    channel_order: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_range: tuple[float, float] | None = None
    resize: int | None = None
    crop: int | None = None

    def __post_init__(self) -> None:
        for name in ("input_shape", "mean", "std", "pixel_range"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    raise DataError(f"preprocessing {name}={value!r} must be a list of numbers")
                convert = int if name == "input_shape" else float
                try:
                    object.__setattr__(self, name, tuple(convert(v) for v in value))
                except (TypeError, ValueError):
                    raise DataError(
                        f"preprocessing {name}={value!r} must be a list of numbers"
                    ) from None
        self._check()

    def _check(self) -> None:
        if self.input_shape is not None and not all(d > 0 for d in self.input_shape):
            raise DataError(f"preprocessing input_shape={list(self.input_shape)} must be positive")
        if self.channel_order is not None and self.channel_order not in CHANNEL_ORDERS:
            raise DataError(
                f"preprocessing channel_order={self.channel_order!r}: use one of "
                f"{', '.join(CHANNEL_ORDERS)}"
            )
        channels = self.channels
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            if not all(math.isfinite(v) for v in values):
                raise DataError(f"preprocessing {name}={list(values)} must hold finite numbers")
            if channels is not None and len(values) != channels:
                raise DataError(
                    f"preprocessing {name} has {len(values)} value(s) for {channels} channel(s)"
                )
        if self.std is not None and not all(v > 0 for v in self.std):
            raise DataError(f"preprocessing std={list(self.std)} must be positive")
        if (self.mean is None) != (self.std is None):
            raise DataError("preprocessing needs both mean and std, or neither")
        if self.pixel_range is not None and (
            len(self.pixel_range) != 2 or not self.pixel_range[0] < self.pixel_range[1]
        ):
            raise DataError(
                f"preprocessing pixel_range={list(self.pixel_range)} must be [low, high]"
            )
        for name in ("resize", "crop"):
            pixels = getattr(self, name)
            if pixels is not None and (
                isinstance(pixels, bool) or not isinstance(pixels, int) or pixels <= 0
            ):
                raise DataError(f"preprocessing {name}={pixels!r} must be a positive int or None")

    @property
    def channels(self) -> int | None:
        """The channel count, from ``channel_order`` or ``input_shape``; DataError when they
        disagree."""
        by_order = CHANNEL_ORDERS.get(self.channel_order) if self.channel_order else None
        by_shape = self.input_shape[0] if self.input_shape else None
        if by_order is not None and by_shape is not None and by_order != by_shape:
            raise DataError(
                f"preprocessing channel_order={self.channel_order!r} has {by_order} "
                f"channel(s), input_shape={list(self.input_shape)} {by_shape}"
            )
        return by_order if by_order is not None else by_shape

    @property
    def transform(self) -> str | None:
        """The steps in order, for people (e.g. ``Resize(256) -> CenterCrop(224) -> ...``)."""
        steps = [f"convert to {self.channel_order}"] if self.channel_order else []
        steps += [f"Resize({self.resize})"] if self.resize is not None else []
        steps += [f"CenterCrop({self.crop})"] if self.crop is not None else []
        if self.pixel_range == TO_TENSOR_RANGE:
            steps.append("ToTensor (pixels / 255)")
        elif self.pixel_range is not None:
            steps.append(f"pixels scaled to {list(self.pixel_range)}")
        steps += ["Normalize(mean, std)"] if self.mean is not None else []
        return " -> ".join(steps) or None

    def with_input_shape(self, shape: Sequence[int]) -> Preprocessing:
        """A copy recording ``shape`` (one calibration input, batch dimension left out)."""
        return replace(self, input_shape=tuple(int(d) for d in shape))

    def to_dict(self) -> dict[str, Any]:
        """Every field (lists for tuples, None where unknown) plus ``transform``: plain types
        for JSON and a ``weights_only`` torch checkpoint."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["transform"] = self.transform
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """The inverse of ``to_dict`` (``transform`` is derived, so ignored); missing keys are
        unknown; an unknown key is a DataError naming it."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names - {"transform"})
        if unknown:
            raise DataError(f"preprocessing has unknown key(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: v for k, v in values.items() if k in names})


def preprocessing_of(data: Any) -> Preprocessing | None:
    """The preprocessing ``data`` applies to its images, where it is known: a data module's
    own ``preprocessing()`` method (returning a ``Preprocessing``, a dict as ``to_dict`` gives,
    or None), else ours (``FashionMNISTDataModule``, ``ImageFolderDataModule``); None for
    anything else (tensors, loaders, other data modules)."""
    method = getattr(data, "preprocessing", None)
    if callable(method):
        given = method()
        if given is None or isinstance(given, Preprocessing):
            return given
        if isinstance(given, Mapping):
            return Preprocessing.from_dict(given)
        raise DataError(
            f"{type(data).__name__}.preprocessing() returned a "
            f"{type(given).__name__}: return a Preprocessing, a dict or None"
        )
    if isinstance(data, FashionMNISTDataModule):
        return Preprocessing(
            input_shape=(1, 28, 28),
            channel_order="L",
            mean=FMNIST_MEAN,
            std=FMNIST_STD,
            pixel_range=TO_TENSOR_RANGE,
        )
    if isinstance(data, ImageFolderDataModule):
        shape = None if data.crop is None else (data.channels, data.crop, data.crop)
        return Preprocessing(
            input_shape=shape,
            channel_order="RGB" if data.channels == 3 else "L",
            mean=data.mean,
            std=data.std,
            pixel_range=TO_TENSOR_RANGE,
            resize=data.resize,
            crop=data.crop,
        )
    return None


def calibrated_preprocessing(data: Any, batch_shape: Sequence[int]) -> Preprocessing:
    """``preprocessing_of(data)`` (or an empty one) with the input shape of the calibration
    batches (``batch_shape``: one batch's shape, batch dimension first)."""
    return (preprocessing_of(data) or Preprocessing()).with_input_shape(batch_shape[1:])
