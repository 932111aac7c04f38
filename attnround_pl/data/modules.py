"""LightningDataModules: a calibration set and an evaluation set.

Calibration: ``calib_size`` images (1,024 by default) chosen seeded and class-balanced from the
training split; evaluation: the validation / test split. ``augment`` applies the training
augmentation to the calibration images (drawn once, seeded, when the set is built).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

from ..errors import InputError, SettingError
from .fashion_mnist_files import DEFAULT_ROOT, prepare
from .sampling import balanced_indices

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(InputError, RuntimeError):
    """The data cannot be used: the message names the folder or setting and what is wrong."""


def check_loader_settings(calib_size: int, batch_size: int, num_workers: int) -> None:
    """Refuse sizes no loader can use; the CLI calls this before it builds the data module."""
    if calib_size <= 0:
        raise DataError(f"data.calib_size={calib_size} must be positive")
    if batch_size <= 0:
        raise DataError(f"data.batch_size={batch_size} must be positive")
    if num_workers < 0:
        raise DataError(f"data.num_workers={num_workers} must be >= 0")


class CalibrationDataModule(pl.LightningDataModule):
    """Base class: subclasses give the training split (with targets) and the evaluation split."""

    def __init__(
        self, calib_size: int = 1024, seed: int = 0, augment: bool = False, batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        check_loader_settings(calib_size, batch_size, num_workers)
        self.calib_size = calib_size
        self.seed = seed
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.calib_set: Dataset | None = None
        self.eval_set: Dataset | None = None

    # subclasses ---------------------------------------------------------------------------
    def train_split(self, augment: bool) -> Dataset:
        raise NotImplementedError

    def train_targets(self, split: Dataset) -> list[int]:
        return list(split.targets)

    def eval_split(self) -> Dataset:
        raise NotImplementedError

    # shared -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.calib_set is None:
            split = self.train_split(self.augment)
            targets = self.train_targets(split)
            try:
                idx = balanced_indices(targets, self.calib_size, self.seed)
            except SettingError as exc:
                raise DataError(f"calibration set: {exc}") from None
            subset = Subset(split, idx)
            with torch.random.fork_rng():  # augmentation drawn once, reproducibly
                torch.manual_seed(self.seed)
                images = torch.stack([subset[i][0] for i in range(len(subset))])
            labels = torch.tensor([int(targets[i]) for i in idx])
            if not torch.isfinite(images).all():
                raise DataError("calibration images contain NaN or Inf")
            self.calib_set = TensorDataset(images, labels)
        if self.eval_set is None:
            self.eval_set = self.eval_split()

    def calib_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The calibration images in a fixed order (they are cached, not trained on as such)."""
        self.setup()
        return DataLoader(self.calib_set, batch_size=batch_size or self.batch_size)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.eval_set, batch_size=self.batch_size, num_workers=self.num_workers)


class FashionMNISTDataModule(CalibrationDataModule):
    """Fashion-MNIST: calibration from the 60k training images, evaluation on the 10k test set."""

    def __init__(
        self, root: str = str(DEFAULT_ROOT), calib_size: int = 1024, seed: int = 0,
        augment: bool = False, batch_size: int = 500, num_workers: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(calib_size, seed, augment, batch_size, num_workers)
        self.root = Path(root)
        self.normalize = transforms.Normalize(FMNIST_MEAN, FMNIST_STD)

    def prepare_data(self) -> None:
        try:
            prepare(self.root)
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


class ImageFolderDataModule(CalibrationDataModule):
    """An ImageNet-style folder: ``train_root/<class>/*.JPEG`` and ``val_root/<class>/*.JPEG``.

    Calibration images: RandomResizedCrop(224) + flip when ``augment``, else Resize(256) +
    CenterCrop(224); evaluation: Resize(256) + CenterCrop(224); ImageNet normalisation.
    """

    def __init__(
        self, train_root: str, val_root: str, calib_size: int = 1024, seed: int = 0,
        augment: bool = False, batch_size: int = 64, num_workers: int = 2,
        resize: int = 256, crop: int = 224,
    ) -> None:  # fmt: skip
        super().__init__(calib_size, seed, augment, batch_size, num_workers)
        self.train_root, self.val_root = Path(train_root), Path(val_root)
        self.resize, self.crop = resize, crop
        self.normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def _folder(self, root: Path, tf: transforms.Compose, what: str) -> datasets.ImageFolder:
        if not root.is_dir():
            raise DataError(f"data.{what}={str(root)!r} is not a folder")
        try:
            return datasets.ImageFolder(str(root), transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"data.{what}={str(root)!r} holds no usable images: {exc}") from None

    def _eval_tf(self) -> transforms.Compose:
        return transforms.Compose([transforms.Resize(self.resize), transforms.CenterCrop(self.crop),
                                   transforms.ToTensor(), self.normalize])  # fmt: skip

    def train_split(self, augment: bool) -> Dataset:
        tf = self._eval_tf()
        if augment:
            tf = transforms.Compose([transforms.RandomResizedCrop(self.crop),
                                     transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                     self.normalize])  # fmt: skip
        return self._folder(self.train_root, tf, "train_root")

    def eval_split(self) -> Dataset:
        return self._folder(self.val_root, self._eval_tf(), "val_root")
