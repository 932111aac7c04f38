import pytest
import torch
from fmnist_fixture import make_fashion_mnist
from imagefolder_fixture import make_image_folder, make_unlabelled_folder, write_image

from attnround_pl.data import (
    UNLABELLED,
    CalibrationDataModule,
    DataError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    check_image_settings,
    check_loader_settings,
)
from attnround_pl.data.fashion_mnist_files import raw_dir
from attnround_pl.data.modules import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD
from attnround_pl.errors import SettingError


def test_fashion_mnist_module(tmp_path):
    make_fashion_mnist(raw_dir(tmp_path), n_train=300, n_test=50)
    dm = FashionMNISTDataModule(root=str(tmp_path), calib_size=100, seed=3, batch_size=20)
    x = torch.cat([b for b, _ in dm.calib_dataloader()])
    assert x.shape == (100, 1, 28, 28)
    assert dm.calib_set.tensors[1].bincount().tolist() == [10] * 10
    assert sum(len(y) for _, y in dm.test_dataloader()) == 50
    again = FashionMNISTDataModule(root=str(tmp_path), calib_size=100, seed=3)
    assert torch.equal(torch.cat([b for b, _ in again.calib_dataloader()]), x)


def test_holdout_is_a_validation_split_disjoint_from_the_calibration_images(tmp_path):
    make_fashion_mnist(raw_dir(tmp_path), n_train=300, n_test=50)
    runs = [FashionMNISTDataModule(root=str(tmp_path), calib_size=100, seed=seed, holdout=120)
            for seed in (0, 1)]
    held = []
    for dm in runs:
        dm.setup()
        assert set(dm.eval_set.indices).isdisjoint(dm._calib_idx)
        assert len(dm.eval_set) == 120 and dm.eval_labelled
        x, y = next(iter(dm.test_dataloader()))
        assert x.shape[1:] == (1, 28, 28) and y.min() >= 0  # training images with labels
        assert "holdout of 120 training images" in dm.eval_description
        held.append(set(dm.eval_set.indices))
    assert held[0] != held[1]  # each avoids its own calibration images ...
    assert len(held[0] & held[1]) > 60  # ... from one fixed order: mostly the same images
    again = FashionMNISTDataModule(root=str(tmp_path), calib_size=100, seed=0, holdout=120)
    again.setup()
    assert again.eval_set.indices == runs[0].eval_set.indices
    plain = FashionMNISTDataModule(root=str(tmp_path), calib_size=100, seed=0)
    plain.setup()
    assert torch.equal(plain.calib_set.tensors[0], runs[0].calib_set.tensors[0])  # same calib
    assert plain.eval_description == "the data module's evaluation split"
    too_many = FashionMNISTDataModule(root=str(tmp_path), calib_size=100, holdout=201)
    with pytest.raises(DataError, match="holdout=201 asks for more images than the 200"):
        too_many.setup()
    with pytest.raises(SettingError, match="holdout must be a whole number"):
        FashionMNISTDataModule(root=str(tmp_path), holdout=-5)


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
                               resize=36, crop=32)
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

    def train_split(self, augment):
        return torch.utils.data.TensorDataset(self.images, torch.arange(len(self.images)) % 2)

    def train_targets(self, split):
        return split.tensors[1].tolist()

    def eval_split(self):
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


# ImageFolderDataModule: configurable size, channels, normalisation; unlabelled folders -------
def _folder_module(train, val=None, **kwargs) -> ImageFolderDataModule:
    kwargs = {"calib_size": 2, "num_workers": 0, "resize": None, "crop": None, **kwargs}
    return ImageFolderDataModule(str(train), None if val is None else str(val), **kwargs)


def _expected(values, mean, std) -> torch.Tensor:
    """(value/255 - mean)/std per channel, computed as ToTensor + Normalize do (float32)."""
    pixels = torch.tensor(values, dtype=torch.float32) / 255
    return (pixels - torch.tensor(mean)) / torch.tensor(std)


def test_rgb_image_normalised_exactly_and_kept_at_its_size(tmp_path):
    for i in range(2):
        write_image(tmp_path / "flat" / f"{i}.png", height=5, width=7, colour=(51, 102, 204))
    dm = _folder_module(tmp_path / "flat", mean=[0.5, 0.25, 0.125], std=[0.5, 0.25, 2.0])
    dm.setup()
    x = dm.calib_set.tensors[0]
    assert x.shape == (2, 3, 5, 7)
    want = _expected([51, 102, 204], [0.5, 0.25, 0.125], [0.5, 0.25, 2.0])
    torch.testing.assert_close(x, want.view(1, 3, 1, 1).expand(2, 3, 5, 7), rtol=0, atol=1e-6)
    # the defaults: ImageNet's mean/std, resized and cropped
    dm = _folder_module(tmp_path / "flat", resize=6, crop=4)
    dm.setup()
    x = dm.calib_set.tensors[0]
    assert x.shape == (2, 3, 4, 4)
    want = _expected([51, 102, 204], IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(x, want.view(1, 3, 1, 1).expand(2, 3, 4, 4), rtol=0, atol=1e-5)


def test_grayscale_conversion_and_default_normalisation(tmp_path):
    for i in range(2):
        write_image(tmp_path / "flat" / f"{i}.png", height=8, width=8, colour=(100, 100, 100))
    dm = _folder_module(tmp_path / "flat", channels=1, crop=3)
    dm.setup()
    x = dm.calib_set.tensors[0]
    assert x.shape == (2, 1, 3, 3)
    assert dm.mean == GRAY_MEAN == (0.449,) and dm.std == GRAY_STD == (0.226,)
    torch.testing.assert_close(x, _expected([100], GRAY_MEAN, GRAY_STD).expand(2, 1, 3, 3))
    dm = _folder_module(tmp_path / "flat", channels=1, mean=[0.0], std=[1.0])
    dm.setup()
    torch.testing.assert_close(dm.calib_set.tensors[0], torch.full((2, 1, 8, 8), 100 / 255))


def test_resize_only_keeps_the_aspect_ratio(tmp_path):
    for i in range(2):
        write_image(tmp_path / "flat" / f"{i}.png", height=10, width=12)
    dm = _folder_module(tmp_path / "flat", resize=5)
    dm.setup()
    assert dm.calib_set.tensors[0].shape == (2, 3, 5, 6)


def test_unlabelled_folder_gives_a_seeded_random_choice(tmp_path):
    root = make_unlabelled_folder(tmp_path / "flat", count=6, nested=2)
    dm = _folder_module(root, calib_size=5, seed=3, mean=[0, 0, 0], std=[1, 1, 1])
    x = torch.cat([b for b, _ in dm.calib_dataloader()])
    assert x.shape == (5, 3, 6, 6) and not dm.calib_labelled
    assert dm.calib_set.tensors[1].tolist() == [UNLABELLED] * 5
    # image i has red value i: which files were chosen, in path order (nested ones included)
    chosen = (x[:, 0, 0, 0] * 255).round().long().tolist()
    gen = torch.Generator().manual_seed(3)
    assert chosen == sorted(torch.randperm(8, generator=gen)[:5].tolist())
    again = _folder_module(root, calib_size=5, seed=3, mean=[0, 0, 0], std=[1, 1, 1])
    assert torch.equal(torch.cat([b for b, _ in again.calib_dataloader()]), x)
    other = _folder_module(root, calib_size=5, seed=4, mean=[0, 0, 0], std=[1, 1, 1])
    other.setup()
    assert not torch.equal(other.calib_set.tensors[0], x)
    # all of them: every file of the tree, top level and nested
    every = _folder_module(root, calib_size=8, mean=[0, 0, 0], std=[1, 1, 1])
    every.setup()
    assert (every.calib_set.tensors[0][:, 0, 0, 0] * 255).round().long().tolist() == list(range(8))
    with pytest.raises(DataError, match="calibration set: asked for 9 calibration images, the "):
        _folder_module(root, calib_size=9).setup()


def test_labelled_can_be_forced_either_way(tmp_path):
    train, val = make_image_folder(tmp_path, classes=3, train_per_class=4, val_per_class=2,
                                   size=8)
    flat = _folder_module(train, val, calib_size=12, labelled=False)  # classes as plain folders
    flat.setup()
    assert not flat.calib_labelled and flat.calib_set.tensors[1].tolist() == [UNLABELLED] * 12
    auto = _folder_module(train, val, calib_size=12)
    auto.setup()
    assert auto.calib_labelled and auto.calib_set.tensors[1].bincount().tolist() == [4, 4, 4]
    assert auto.eval_labelled
    make_unlabelled_folder(tmp_path / "top", count=3)
    with pytest.raises(DataError, match="data.train_root='.*top' holds no usable images"):
        _folder_module(tmp_path / "top", labelled=True).setup()


def test_val_root_is_optional(tmp_path):
    root = make_unlabelled_folder(tmp_path / "flat", count=4)
    dm = _folder_module(root, batch_size=3)
    assert not dm.has_eval_split
    dm.setup("test")
    assert dm.eval_set is None and len(dm.calib_set) == 2
    with pytest.raises(DataError) as info:
        dm.test_dataloader()
    assert str(info.value) == (
        "ImageFolderDataModule has no evaluation split: data.val_root is not set"
    )
    # an unlabelled evaluation folder: labels -1
    with_val = _folder_module(root, root, batch_size=3)
    assert with_val.has_eval_split
    labels = torch.cat([y for _, y in with_val.test_dataloader()])
    assert labels.tolist() == [UNLABELLED] * 4 and not with_val.eval_labelled


def test_image_folder_keeps_its_defaults(tmp_path):
    dm = ImageFolderDataModule(str(tmp_path), str(tmp_path))
    assert (dm.resize, dm.crop, dm.channels, dm.labelled) == (256, 224, 3, None)
    assert (dm.mean, dm.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert dm.has_eval_split


@pytest.mark.parametrize("split", ["train_root", "val_root"])
def test_mixed_image_sizes_fail_with_one_line(tmp_path, split):
    good = make_unlabelled_folder(tmp_path / "good", count=2, height=8, width=8)
    mixed = tmp_path / "mixed"
    write_image(mixed / "a.png", height=8, width=8)
    write_image(mixed / "sub" / "b.png", height=10, width=8)
    roots = (mixed, good) if split == "train_root" else (good, mixed)
    with pytest.raises(DataError) as info:
        _folder_module(*roots).setup()
    assert str(info.value) == (
        f"data.{split}={str(mixed)!r} holds images of different sizes (height x width): a.png "
        "is 8x8, sub/b.png is 10x8; set data.crop to give them one size"
    )
    with pytest.raises(DataError, match=r"\(height x width after resize=4\): a.png is 4x4, "):
        _folder_module(*roots, resize=4).setup()
    dm = _folder_module(*roots, crop=6)  # a crop gives them one size
    dm.setup()
    assert dm.calib_set.tensors[0].shape == (2, 3, 6, 6)


def test_same_aspect_ratio_resizes_to_one_size(tmp_path):
    write_image(tmp_path / "flat" / "a.png", height=8, width=8)
    write_image(tmp_path / "flat" / "b.png", height=16, width=16)
    dm = _folder_module(tmp_path / "flat", resize=4)
    dm.setup()
    assert dm.calib_set.tensors[0].shape == (2, 3, 4, 4)


def test_augment_without_crop_only_flips(tmp_path):
    root = make_unlabelled_folder(tmp_path / "flat", count=3, height=5, width=7)
    dm = _folder_module(root, augment=True, calib_size=3)
    dm.setup()
    assert dm.calib_set.tensors[0].shape == (3, 3, 5, 7)
    dm = _folder_module(root, augment=True, calib_size=3, crop=4)
    dm.setup()
    assert dm.calib_set.tensors[0].shape == (3, 3, 4, 4)


@pytest.mark.parametrize("crop", [None, 4])
def test_unreadable_image_is_named(tmp_path, crop):
    root = make_unlabelled_folder(tmp_path / "flat", count=2)
    (root / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image '.*broken.png'"):
        _folder_module(root, calib_size=3, crop=crop).setup()


def test_empty_unlabelled_folder_is_refused(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="data.train_root='.*flat' holds no usable images: no file"):
        _folder_module(tmp_path / "flat", labelled=False).setup()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"channels": 2}, "data.channels=2 must be 1 \\(grayscale\\) or 3 \\(RGB\\)"),
        ({"crop": 0}, "data.crop=0 must be a positive number of pixels or null"),
        ({"resize": -1}, "data.resize=-1 must be a positive number of pixels or null"),
        ({"mean": [0.5]}, "data.mean has 1 value, data.channels=3 needs 3"),
        ({"channels": 1, "std": [0.2, 0.2, 0.2]}, "data.std has 3 values, data.channels=1 needs 1"),
        ({"std": [0.2, 0.0, 0.2]}, "data.std=\\[0.2, 0.0, 0.2\\] must be positive"),
        ({"mean": [0.1, float("nan"), 0.1]}, "data.mean=.* must hold finite numbers"),
        ({"mean": "0.5"}, "data.mean='0.5' must be a list of 3 number"),
    ],
)
def test_image_settings_no_folder_can_satisfy_are_refused(tmp_path, settings, message):
    with pytest.raises(DataError, match=message):
        check_image_settings(**settings)
    with pytest.raises(DataError, match=message):
        ImageFolderDataModule(str(tmp_path), **settings)
    check_image_settings(channels=1, crop=None, resize=None, mean=[0.5], std=[0.5])


class _Ragged(CalibrationDataModule):
    """A subclass whose training items differ in shape."""

    def __init__(self) -> None:
        super().__init__(calib_size=2)

    def train_split(self, augment):
        return [(torch.zeros(1, 4, 4), 0), (torch.zeros(1, 5, 4), 1)]

    def train_targets(self, split):
        return [0, 1]

    def eval_split(self):
        return self.train_split(False)


def test_calibration_items_of_different_shapes_fail_with_one_line():
    with pytest.raises(DataError) as info:
        _Ragged().setup()
    assert str(info.value) == (
        "calibration images differ in shape: image 0 is (1, 4, 4), image 1 is (1, 5, 4)"
    )
