"""LightningDataModules: a calibration set and an evaluation set.

Calibration: ``calib_size`` images (1,024 by default) chosen seeded from the training split,
class-balanced when the split has labels, a seeded random choice when it has none; evaluation:
the validation / test split, when there is one (``has_eval_split``), or with ``holdout=N`` a
validation split of N training images that are not calibration images (for choosing settings
without looking at the test set). ``augment`` applies the training augmentation to the
calibration images (drawn once, seeded, when the set is built).

Unlabelled images carry the label ``UNLABELLED`` (-1), so every loader still yields
``(images, labels)`` pairs: ``for x, _ in data.calib_dataloader()`` works for any data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import InputError, SettingError, is_finite_number
from .fashion_mnist_files import DEBIAN_DIR, DEFAULT_ROOT, is_prepared, prepare, raw_dir
from .sampling import balanced_indices

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Grayscale default: ImageNet's per-channel mean and std averaged over the three channels.
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
UNLABELLED = -1  # the label of an image from a folder without class subfolders


class DataError(InputError, RuntimeError):
    """The data cannot be used: the message names the folder or setting and what is wrong."""


HOLDOUT_SEED = 20261202  # one fixed order of the training split for every holdout


def holdout_indices(count: int, size: int, exclude: Sequence[int]) -> list[int]:
    """``size`` indices of ``range(count)`` outside ``exclude`` (the calibration images): the
    first ones of a fixed seeded permutation, ascending. The permutation does not depend on the
    calibration seed, so the holdouts of runs with different seeds differ only where their
    calibration sets do. SettingError when too few images are left."""
    left = count - len(set(exclude))
    if size > left:
        raise SettingError(f"holdout={size} asks for more images than the {left} training "
                           f"images that are not calibration images")
    skip = set(exclude)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    chosen = [i for i in order.tolist() if i not in skip][:size]
    return sorted(chosen)


def check_loader_settings(calib_size: int, batch_size: int, num_workers: int) -> None:
    """Refuse sizes no loader can use; the CLI calls this before it builds the data module."""
    if calib_size <= 0:
        raise DataError(f"data.calib_size={calib_size} must be positive")
    if batch_size <= 0:
        raise DataError(f"data.batch_size={batch_size} must be positive")
    if num_workers < 0:
        raise DataError(f"data.num_workers={num_workers} must be >= 0")


def check_image_settings(
    channels: int = 3, crop: int | None = 224, resize: int | None = 256,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> None:
    """Refuse image settings no folder can satisfy (no file is read).

    The CLI calls this before it builds an ``ImageFolderDataModule``; the module's ``__init__``
    calls it too. ``channels`` must be 1 or 3, ``crop`` and ``resize`` positive or None,
    ``mean`` and ``std`` (when given) one finite number per channel, ``std`` positive.

    >>> check_image_settings(channels=1, mean=[0.5], std=[0.5])
    >>> check_image_settings(channels=1, mean=[0.5, 0.5, 0.5])
    Traceback (most recent call last):
    ...
    attnround_pl.data.modules.DataError: data.mean has 3 values, data.channels=1 needs 1
    """
    if isinstance(channels, bool) or channels not in (1, 3):
        raise DataError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
    for name, pixels in (("crop", crop), ("resize", resize)):
        if pixels is not None and (
            isinstance(pixels, bool) or not isinstance(pixels, int) or pixels <= 0
        ):
            raise DataError(f"data.{name}={pixels} must be a positive number of pixels or null")
    for name, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise DataError(f"data.{name}={values!r} must be a list of {channels} number(s)")
        if len(values) != channels:
            raise DataError(
                f"data.{name} has {len(values)} value{'s' * (len(values) != 1)}, "
                f"data.channels={channels} needs {channels}"
            )
        if not all(is_finite_number(v) for v in values):
            raise DataError(f"data.{name}={list(values)} must hold finite numbers")
    if std is not None and not all(v > 0 for v in std):
        raise DataError(f"data.std={list(std)} must be positive (images are divided by it)")


def default_normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) used when none is given: ImageNet's for RGB, its average for grayscale."""
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GRAY_MEAN, GRAY_STD)


def random_indices(count: int, size: int, seed: int) -> list[int]:
    """``size`` of ``range(count)`` chosen with ``seed``, ascending (for unlabelled data).

    Raises SettingError (a ValueError) when ``count`` is smaller than ``size``.
    """
    if size <= 0:
        raise SettingError(f"calibration size must be positive, got {size}")
    if size > count:
        raise SettingError(f"asked for {size} calibration images, the data set holds {count}")
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(count, generator=gen)[:size].tolist())


class CalibrationDataModule(pl.LightningDataModule):
    """Base class: subclasses give the training split and (optionally) the evaluation split.

    After ``setup()``: ``calib_set`` is a ``TensorDataset(images, labels)`` of the chosen
    calibration images (labels ``UNLABELLED`` = -1 when the training split has none) and
    ``eval_set`` the evaluation split (None when ``has_eval_split`` is False), or with
    ``holdout > 0`` that many training images outside the calibration set (``holdout_indices``;
    ``eval_description`` says which). ``calib_labelled`` / ``eval_labelled`` say whether those
    splits carry class labels.
    """

    def __init__(
        self, calib_size: int = 1024, seed: int = 0, augment: bool = False, batch_size: int = 256,
        num_workers: int = 0, holdout: int = 0,
    ) -> None:
        super().__init__()
        check_loader_settings(calib_size, batch_size, num_workers)
        if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
            raise SettingError(f"holdout must be a whole number of images >= 0, got {holdout!r}")
        self.holdout = holdout
        self._calib_idx: list[int] = []
        self.calib_size = calib_size
        self.seed = seed
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.calib_set: Dataset | None = None
        self.eval_set: Dataset | None = None
        self.calib_labelled = True
        self.eval_labelled = True

    # subclasses ---------------------------------------------------------------------------
    def train_split(self, augment: bool) -> Dataset:
        raise NotImplementedError

    def train_targets(self, split: Dataset) -> list[int] | None:
        """The class label of every item of ``split``; None when it has no labels."""
        return list(split.targets)

    def eval_split(self) -> Dataset:
        raise NotImplementedError

    @property
    def has_eval_split(self) -> bool:
        """Whether there is evaluation data (``test_dataloader()`` raises DataError if not)."""
        return True

    @property
    def eval_description(self) -> str:
        """What the evaluation data is, for reports: the holdout or the evaluation split."""
        if self.holdout:
            return (f"a holdout of {self.holdout} training images, none of them calibration "
                    "images (validation split)")
        return "the data module's evaluation split"

    def describe_item(self, split: Dataset, index: int) -> str:
        """How an error message names item ``index`` of ``split`` (a file name where known)."""
        return f"image {index}"

    def no_eval_hint(self) -> str:
        """What a user does to get an evaluation split (ends the DataError of a missing one)."""
        return "give it one to evaluate on"

    # shared -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.calib_set is None:
            split = self.train_split(self.augment)
            targets = self.train_targets(split)
            try:
                if targets is None:
                    idx = random_indices(len(split), self.calib_size, self.seed)
                else:
                    idx = balanced_indices(targets, self.calib_size, self.seed)
            except SettingError as exc:
                raise DataError(f"calibration set: {exc}") from None
            self._calib_idx = list(idx)
            subset = Subset(split, idx)
            with torch.random.fork_rng(devices=[]):  # augmentation drawn once, reproducibly
                torch.manual_seed(self.seed)
                items = [subset[i][0] for i in range(len(subset))]
            for i, image in enumerate(items):
                if image.shape != items[0].shape:
                    raise DataError(
                        f"calibration images differ in shape: {self.describe_item(split, idx[0])}"
                        f" is {tuple(items[0].shape)}, {self.describe_item(split, idx[i])} is "
                        f"{tuple(image.shape)}"
                    )
            images = torch.stack(items)
            if targets is None:
                labels = torch.full((len(idx),), UNLABELLED, dtype=torch.long)
            else:
                labels = torch.tensor([int(targets[i]) for i in idx])
            if not torch.isfinite(images).all():
                raise DataError("calibration images contain NaN or Inf")
            self.calib_labelled = targets is not None
            self.calib_set = TensorDataset(images, labels)
        if self.eval_set is None and self.holdout:
            split = self.train_split(False)
            try:
                idx = holdout_indices(len(split), self.holdout, self._calib_idx)
            except SettingError as exc:
                raise DataError(f"validation split: {exc}") from None
            self.eval_labelled = self.train_targets(split) is not None
            self.eval_set = Subset(split, idx)
        elif self.eval_set is None and self.has_eval_split:
            self.eval_set = self.eval_split()

    def calib_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The calibration images in a fixed order (they are cached, not trained on as such)."""
        self.setup()
        return DataLoader(self.calib_set, batch_size=batch_size or self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """The evaluation split (or the holdout); DataError when there is none (see
        ``has_eval_split``)."""
        if not self.has_eval_split and not self.holdout:
            raise DataError(f"{type(self).__name__} has no evaluation split: {self.no_eval_hint()}")
        self.setup()
        return DataLoader(self.eval_set, batch_size=self.batch_size, num_workers=self.num_workers)


class FashionMNISTDataModule(CalibrationDataModule):
    """Fashion-MNIST: calibration from the 60k training images, evaluation on the 10k test set
    (or, with ``holdout=5000``, on 5,000 other training images: the validation split).

    The four idx files must be in ``<root>/FashionMNIST/raw`` (``python -m attnround_pl.data
    --root <root>`` puts them there; ``scripts/setup.sh`` does it for ``data``). Without them
    ``prepare_data()`` raises DataError and writes nothing, unless ``download`` is True: then it
    unpacks them there (about 55 MB, from Debian's dataset-fashion-mnist package, else
    torchvision's download) and prints one line saying what it wrote where.
    """

    def __init__(
        self, root: str = str(DEFAULT_ROOT), calib_size: int = 1024, seed: int = 0,
        augment: bool = False, batch_size: int = 500, num_workers: int = 0,
        download: bool = False, holdout: int = 0,
    ) -> None:
        super().__init__(calib_size, seed, augment, batch_size, num_workers, holdout)
        self.root = Path(root)
        self.download = download
        self.normalize = transforms.Normalize(FMNIST_MEAN, FMNIST_STD)

    def prepare_data(self) -> None:
        """DataError (one line, nothing written) when the files are missing and ``download``
        is False; with ``download`` True they are unpacked (one line printed)."""
        if is_prepared(self.root):
            return
        if not self.download:
            raise DataError(
                f"Fashion-MNIST is not in {raw_dir(self.root)}: set --data.init_args.download "
                f"true (download=True) to unpack about 55 MB into it from Debian's "
                f"dataset-fashion-mnist package ({DEBIAN_DIR}) or torchvision's download, or run "
                f"python -m attnround_pl.data --root {self.root}"
            )
        try:
            print(prepare(self.root))
        except RuntimeError as exc:
            raise DataError(str(exc)) from None

    def _split(self, train: bool, augment: bool) -> Dataset:
        self.prepare_data()
        steps = [transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip()]
        tf = transforms.Compose(
            [*(steps if augment else []), transforms.ToTensor(), self.normalize]
        )
        return datasets.FashionMNIST(str(self.root), train=train, transform=tf)

    def train_split(self, augment: bool) -> Dataset:
        return self._split(True, augment)

    def eval_split(self) -> Dataset:
        return self._split(False, False)


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Read one image file converted to PIL ``mode`` ("RGB" or "L"); DataError naming the file
    when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert(mode)
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path!r}: {exc}") from None


def image_files(root: Path, recursive: bool = True) -> list[Path]:
    """The image files (torchvision's IMG_EXTENSIONS, any case) under ``root``, sorted by path;
    ``recursive=False``: only those directly in it."""
    if not recursive:
        return sorted(p for p in root.iterdir() if p.is_file() and _is_image(p.name))
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found += [Path(folder) / n for n in names if _is_image(n)]
    return sorted(found)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


class ImageFiles(Dataset):
    """Image files without labels: item ``i`` is ``(transform(image i), UNLABELLED)``.

    ``samples`` lists ``(path, UNLABELLED)`` as torchvision's ImageFolder lists its files.
    """

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
                 loader: Callable[[str], Image.Image]) -> None:
        self.samples = [(str(p), UNLABELLED) for p in paths]
        self.transform, self.loader = transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.loader(self.samples[index][0])), UNLABELLED


def _resized(height: int, width: int, resize: int | None) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(resize): the shorter side becomes ``resize``."""
    if resize is None:
        return height, width
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    return (new_long, resize) if width <= height else (resize, new_long)


class ImageFolderDataModule(CalibrationDataModule):
    """A folder of images for calibration (``train_root``) and, optionally, one for evaluation
    (``val_root``).

    Layout of each folder, when ``labelled`` is None (auto): image files directly in the folder
    mean unlabelled data (every image file in it and in its subfolders, any depth, label -1);
    otherwise each subfolder is a class (ImageNet-style ``<class>/*.JPEG``, torchvision's
    ImageFolder). ``labelled=True`` forces classes (top-level files are then ignored),
    ``labelled=False`` forces unlabelled. Calibration images: class-balanced when labelled, a
    seeded random choice when not. ``val_root=None``: no evaluation split (``has_eval_split``
    is False and ``test_dataloader()`` raises DataError).

    Images are converted to ``channels`` (3: RGB, 1: grayscale by PIL's luma), resized so the
    shorter side is ``resize`` (None: kept), centre-cropped to ``crop`` x ``crop`` (None: kept),
    scaled to [0, 1] and normalised by ``mean``/``std`` (default: ImageNet's for RGB, their
    channel average (0.449,)/(0.226,) for grayscale). With ``crop=None`` every image of a
    folder must come out at one size, which ``setup()`` checks from the file headers.
    ``augment``: RandomResizedCrop(crop) + flip (only the flip, after the resize, when ``crop``
    is None) for the calibration images. ``holdout=N``: evaluate on N training images that are
    not calibration images (a validation split) instead of ``val_root``.

    >>> dm = ImageFolderDataModule("photos/", val_root=None, channels=1, resize=None, crop=64)
    """

    def __init__(
        self, train_root: str, val_root: str | None = None, calib_size: int = 1024, seed: int = 0,
        augment: bool = False, batch_size: int = 64, num_workers: int = 2,
        resize: int | None = 256, crop: int | None = 224, channels: int = 3,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
        labelled: bool | None = None, holdout: int = 0,
    ) -> None:
        super().__init__(calib_size, seed, augment, batch_size, num_workers, holdout)
        check_image_settings(channels, crop, resize, mean, std)
        self.train_root = Path(train_root)
        self.val_root = None if val_root is None else Path(val_root)
        self.resize, self.crop, self.channels, self.labelled = resize, crop, channels, labelled
        default_mean, default_std = default_normalization(channels)
        self.mean = tuple(float(v) for v in (default_mean if mean is None else mean))
        self.std = tuple(float(v) for v in (default_std if std is None else std))
        self.normalize = transforms.Normalize(self.mean, self.std)
        self.loader = partial(load_image, mode="RGB" if channels == 3 else "L")

    @property
    def has_eval_split(self) -> bool:
        return self.val_root is not None

    def no_eval_hint(self) -> str:
        return "data.val_root is not set"

    def _folder(self, root: Path, tf: transforms.Compose, what: str) -> Dataset:
        if not root.is_dir():
            raise DataError(f"data.{what}={str(root)!r} is not a folder")
        labelled = self.labelled
        if labelled is None:
            labelled = not image_files(root, recursive=False)
        if labelled:
            try:
                split = datasets.ImageFolder(str(root), transform=tf, loader=self.loader)
            except (FileNotFoundError, RuntimeError) as exc:
                raise DataError(
                    f"data.{what}={str(root)!r} holds no usable images: {exc}"
                ) from None
        else:
            files = image_files(root)
            if not files:
                raise DataError(
                    f"data.{what}={str(root)!r} holds no usable images: no file with an image "
                    f"extension ({', '.join(IMG_EXTENSIONS)}) in it or in its subfolders"
                )
            split = ImageFiles(files, tf, self.loader)
        if self.crop is None:
            self._check_one_size(split, root, what)
        return split

    def _check_one_size(self, split: Dataset, root: Path, what: str) -> None:
        """DataError unless every image of ``split`` comes out at one (height, width)."""
        first: tuple[str, tuple[int, int]] | None = None
        for path, _ in split.samples:
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except OSError as exc:
                raise DataError(f"cannot read image {path!r}: {exc}") from None
            size = _resized(height, width, self.resize)
            if first is None:
                first = (path, size)
            elif size != first[1]:
                after = f" after resize={self.resize}" if self.resize is not None else ""
                raise DataError(
                    f"data.{what}={str(root)!r} holds images of different sizes (height x width"
                    f"{after}): {os.path.relpath(first[0], root)} is {first[1][0]}x{first[1][1]}, "
                    f"{os.path.relpath(path, root)} is {size[0]}x{size[1]}; set data.crop to give "
                    "them one size"
                )

    def _sized(self) -> list:
        return [
            *([transforms.Resize(self.resize)] if self.resize is not None else []),
            *([transforms.CenterCrop(self.crop)] if self.crop is not None else []),
        ]

    def _eval_tf(self) -> transforms.Compose:
        return transforms.Compose([*self._sized(), transforms.ToTensor(), self.normalize])

    def train_split(self, augment: bool) -> Dataset:
        tf = self._eval_tf()
        if augment:
            if self.crop is not None:
                steps = [transforms.RandomResizedCrop(self.crop)]
            else:
                steps = [transforms.Resize(self.resize)] if self.resize is not None else []
            tf = transforms.Compose([*steps, transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), self.normalize])
        return self._folder(self.train_root, tf, "train_root")

    def train_targets(self, split: Dataset) -> list[int] | None:
        return None if isinstance(split, ImageFiles) else list(split.targets)

    def eval_split(self) -> Dataset:
        split = self._folder(self.val_root, self._eval_tf(), "val_root")
        self.eval_labelled = not isinstance(split, ImageFiles)
        return split

    def describe_item(self, split: Dataset, index: int) -> str:
        return str(split.samples[index][0])
