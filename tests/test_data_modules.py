import pytest
import torch
from fmnist_fixture import make_fashion_mnist
from imagefolder_fixture import make_image_folder

from attnround_pl.data import (
    CalibrationDataModule,
    DataError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    check_loader_settings,
)
from attnround_pl.data.fashion_mnist_files import raw_dir


def test_fashion_mnist_module(tmp_path):
    make_fashion_mnist(raw_dir(tmp_path), n_train=300, n_test=50)
    dm = FashionMNISTDataModule(root=str(tmp_path), calib_size=100, seed=3, batch_size=20)
    x = torch.cat([b for b, _ in dm.calib_dataloader()])
    assert x.shape == (100, 1, 28, 28)
    assert dm.calib_set.tensors[1].bincount().tolist() == [10] * 10
    assert sum(len(y) for _, y in dm.test_dataloader()) == 50
    again = FashionMNISTDataModule(root=str(tmp_path), calib_size=100, seed=3)
    assert torch.equal(torch.cat([b for b, _ in again.calib_dataloader()]), x)


def test_augmentation_is_seeded(tmp_path):
    make_fashion_mnist(raw_dir(tmp_path), n_train=300, n_test=50)
    a = FashionMNISTDataModule(root=str(tmp_path), calib_size=40, augment=True, seed=1)
    b = FashionMNISTDataModule(root=str(tmp_path), calib_size=40, augment=True, seed=1)
    plain = FashionMNISTDataModule(root=str(tmp_path), calib_size=40, seed=1)
    a.setup(), b.setup(), plain.setup()
    assert torch.equal(a.calib_set.tensors[0], b.calib_set.tensors[0])
    assert not torch.equal(a.calib_set.tensors[0], plain.calib_set.tensors[0])


def test_image_folder_module(tmp_path):
    train, val = make_image_folder(tmp_path, classes=3, train_per_class=8, val_per_class=4)
    dm = ImageFolderDataModule(str(train), str(val), calib_size=12, batch_size=5, num_workers=0,
                               resize=36, crop=32)  # fmt: skip
    dm.setup()
    assert dm.calib_set.tensors[0].shape == (12, 3, 32, 32)
    assert dm.calib_set.tensors[1].bincount().tolist() == [4, 4, 4]
    xs = [x for x, _ in dm.test_dataloader()]
    assert sum(len(x) for x in xs) == 12 and xs[0].shape[1:] == (3, 32, 32)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="data.train_root='.*missing' is not a folder"):
        ImageFolderDataModule(str(tmp_path / "missing"), str(tmp_path)).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no usable images"):
        ImageFolderDataModule(str(tmp_path / "empty"), str(tmp_path)).setup()
    train, val = make_image_folder(tmp_path / "small", train_per_class=2)
    with pytest.raises(DataError, match="asked for 1024 calibration images, the data set holds 6"):
        ImageFolderDataModule(str(train), str(val), num_workers=0).setup()


class _TensorData(CalibrationDataModule):
    """Calibration images given as a tensor (e.g. one holding NaN)."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__(calib_size=len(images))
        self.images = images

    def train_split(self, augment):  # noqa: ANN001, ANN201
        return torch.utils.data.TensorDataset(self.images, torch.arange(len(self.images)) % 2)

    def train_targets(self, split):  # noqa: ANN001, ANN201
        return split.tensors[1].tolist()

    def eval_split(self):  # noqa: ANN201
        return self.train_split(False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_calibration_images_is_refused(bad):
    images = torch.randn(8, 1, 4, 4)
    _TensorData(images.clone()).setup()  # finite: fine
    images[3, 0, 1, 2] = bad
    with pytest.raises(DataError, match="calibration images contain NaN or Inf"):
        _TensorData(images).setup()


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((0, 64, 0), "data.calib_size=0 must be positive"),
        ((1024, -1, 0), "data.batch_size=-1 must be positive"),
        ((1024, 64, -2), "data.num_workers=-2 must be >= 0"),
    ],
)
def test_loader_settings_no_loader_can_use_are_refused(sizes, message):
    with pytest.raises(DataError, match=message):
        check_loader_settings(*sizes)
    with pytest.raises(DataError, match=message):
        FashionMNISTDataModule("unused", *sizes[:1], batch_size=sizes[1], num_workers=sizes[2])
    check_loader_settings(1, 1, 0)
