import doctest

import lightning.pytorch as pl
import pytest
import torch
from imagefolder_fixture import make_image_folder, make_unlabelled_folder
from torch.utils.data import DataLoader, TensorDataset

from attnround_pl.data import (
    DataError,
    ImageFolderDataModule,
    calibration_images,
    evaluation_batches,
    split_batch,
)
from attnround_pl.data import sources as sources_module


def _images(n: int = 10, shape: tuple[int, ...] = (3, 4, 4)) -> torch.Tensor:
    return torch.arange(n * torch.Size(shape).numel(), dtype=torch.float32).view(n, *shape)


class _TrainOnly(pl.LightningDataModule):
    """A user's data module: a shuffling train loader; records the hooks Lightning would call."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images, self.calls = images, []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")

    def train_dataloader(self) -> DataLoader:
        labels = torch.arange(len(self.images))
        return DataLoader(TensorDataset(self.images, labels), batch_size=3, shuffle=True)


class _WithVal(_TrainOnly):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images[:4], torch.arange(4)), batch_size=2)


class _WithTest(_WithVal):
    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images[:6], torch.arange(6)), batch_size=2)


# calibration_images: every kind of source ---------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 5), (7,)])
def test_tensor_source(shape):
    x = _images(10, shape)
    got = calibration_images(x)
    assert got.dtype == torch.float32 and torch.equal(got, x)
    assert torch.equal(calibration_images(x, size=4), x[:4])
    assert torch.equal(calibration_images(x, size=50), x)  # at most size: all there are
    assert torch.equal(calibration_images(x.double()), x)  # other float types become float32


def test_dataloader_and_dataset_sources():
    x = _images(10)
    loader = DataLoader(TensorDataset(x, torch.arange(10)), batch_size=4)
    assert torch.equal(calibration_images(loader), x)
    assert torch.equal(calibration_images(loader, size=6), x[:6])  # stops inside a batch
    bare = DataLoader(x, batch_size=3)  # batches are bare tensors
    assert torch.equal(calibration_images(bare, size=5), x[:5])
    # a map-style Dataset: single samples, read in index order
    assert torch.equal(calibration_images(TensorDataset(x, torch.arange(10))), x)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b, i: b,
        lambda b, i: (b, torch.full((len(b),), i)),
        lambda b, i: [b, "labels", "ignored"],
        lambda b, i: {"image": b, "label": i},
        lambda b, i: {"images": b},
        lambda b, i: {"input": b, "other": "ignored"},
    ],
    ids=["tensor", "tuple", "list", "image-key", "images-key", "input-key"],
)
def test_iterable_sources(wrap):
    x = _images(9)
    batches = [wrap(x[i : i + 4], i) for i in range(0, 9, 4)]
    assert torch.equal(calibration_images(batches), x)
    assert torch.equal(calibration_images(iter(batches), size=7), x[:7])  # a one-pass iterator
    generator = (wrap(x[i : i + 2], i) for i in range(0, 9, 2))
    assert torch.equal(calibration_images(generator), x)


def test_lightning_data_module_source_is_read_seeded():
    x = _images(10)
    dm = _TrainOnly(x)
    first = calibration_images(dm, seed=5)
    assert dm.calls == ["prepare_data", "setup:fit"]
    assert not torch.equal(first, x)  # shuffled ...
    assert torch.equal(first.sort(dim=0).values, x)  # ... but every image once
    assert torch.equal(calibration_images(_TrainOnly(x), seed=5), first)  # same seed: same
    assert not torch.equal(calibration_images(_TrainOnly(x), seed=6), first)
    state = torch.random.get_rng_state()
    calibration_images(_TrainOnly(x), seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's state untouched
    assert len(calibration_images(_TrainOnly(x), size=4)) == 4


def test_lightning_data_module_without_train_loader_is_refused():
    class Empty(pl.LightningDataModule):
        pass

    with pytest.raises(DataError, match="^Empty has no train_dataloader\\(\\): calibration"):
        calibration_images(Empty())


def test_calibration_data_module_source_gives_its_seeded_set(tmp_path):
    train, val = make_image_folder(tmp_path, classes=3, train_per_class=4, val_per_class=2,
                                   size=8)
    dm = ImageFolderDataModule(str(train), str(val), calib_size=6, seed=2, num_workers=0,
                               resize=None, crop=None)
    got = calibration_images(dm)
    assert torch.equal(got, dm.calib_set.tensors[0]) and got.shape == (6, 3, 8, 8)
    assert torch.equal(calibration_images(dm, size=4), got[:4])


# calibration_images: every error -------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ([], "^the source holds no images$"),
        (torch.zeros(0, 3, 4, 4), "^the tensor holds no images$"),
        (DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=2), "^the source holds no "),
        (["text"], "^batch 0 of the source is a str, not a tensor, an \\(images, labels\\) tuple"),
        ([3.5], "^batch 0 of the source is a float, not a tensor"),
        ([("x", torch.zeros(2))], "^batch 0 of the source is a tuple whose first element is a str"),
        ([()], "^batch 0 of the source is an empty tuple: it holds no images$"),
        ([{"pixels": torch.zeros(2, 3)}], "is a dict with keys \\['pixels'\\]: none of"),
        ([{"image": [1, 2]}], "^batch 0 of the source\\['image'\\] is a list, not a tensor$"),
        ([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)],
         "^images differ in shape: the source gave \\(3, 4\\) first, batch 1 of the source "
         "gives \\(3, 5\\)"),
        ([torch.zeros(2, 3, 4, dtype=torch.uint8)],
         "^batch 0 of the source holds torch.uint8 images: convert them to float and normalise"),
        (torch.zeros(2, 3, dtype=torch.int64), "^the tensor holds torch.int64 images: convert"),
        ([torch.tensor([[0.0, float("nan")]])], "^batch 0 of the source holds NaN or Inf$"),
        (torch.tensor([[0.0], [float("inf")]]), "^the tensor holds NaN or Inf$"),
        ([torch.zeros(2, 3), torch.zeros(5)],
         "^batch 1 of the source has shape \\(5,\\): images need a batch dimension first"),
        (torch.tensor(1.0), "^the tensor has shape \\(\\): images need a batch dimension"),
        ("photos/", "^calibration_images got a str \\('photos/'\\); pass tensors, a DataLoader"),
        (42, "^calibration_images got a int: pass a tensor of images, a DataLoader"),
    ],
)
def test_calibration_source_errors_are_one_line(source, message):
    with pytest.raises(DataError, match=message) as info:
        calibration_images(source)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_calibration_size_must_be_positive(size):
    with pytest.raises(DataError, match="calibration size=.* must be a positive number"):
        calibration_images(torch.zeros(4, 2), size=size)


def test_only_the_images_kept_are_checked():
    x = torch.zeros(4, 2)
    x[3, 0] = float("nan")
    assert torch.equal(calibration_images(x, size=3), torch.zeros(3, 2))
    later = [torch.zeros(2, 2), torch.zeros(2, 9)]  # never read: size reached first
    assert calibration_images(later, size=2).shape == (2, 2)


# evaluation_batches ---------------------------------------------------------------------------
def test_evaluation_batches_of_lightning_data_modules():
    x = _images(10)
    assert evaluation_batches(_TrainOnly(x)) is None
    dm = _WithVal(x)
    assert sum(len(b) for b, _ in evaluation_batches(dm)) == 4
    assert dm.calls == ["prepare_data", "setup:validate"]
    dm = _WithTest(x)  # test_dataloader wins over val_dataloader
    assert sum(len(b) for b, _ in evaluation_batches(dm)) == 6
    assert dm.calls == ["prepare_data", "setup:test"]


def test_evaluation_batches_of_our_data_modules(tmp_path):
    train, val = make_image_folder(tmp_path, classes=2, train_per_class=2, val_per_class=3,
                                   size=8)
    dm = ImageFolderDataModule(str(train), str(val), calib_size=2, batch_size=4, num_workers=0,
                               resize=None, crop=None)
    labels = torch.cat([split_batch(b)[1] for b in evaluation_batches(dm)])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    no_val = ImageFolderDataModule(str(train), None, calib_size=2, resize=None, crop=None)
    assert evaluation_batches(no_val) is None
    # an unlabelled evaluation folder: images without labels
    flat = make_unlabelled_folder(tmp_path / "flat", count=3)
    dm = ImageFolderDataModule(str(flat), str(flat), calib_size=2, num_workers=0, resize=None,
                               crop=None)
    images, labels = split_batch(next(iter(evaluation_batches(dm))))
    assert images.shape == (3, 3, 6, 6) and labels is None


def test_evaluation_batches_given_explicitly():
    x, y = _images(6), torch.arange(6)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    assert evaluation_batches(loader) is loader
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    assert evaluation_batches(batches) is batches
    assert evaluation_batches(None) is None
    assert evaluation_batches((x, y)) == [(x, y)]  # one (images, labels) batch
    assert evaluation_batches([x, y]) == [[x, y]]
    (only,) = evaluation_batches(x)  # a bare tensor: one batch without labels
    assert only is x
    read = list(evaluation_batches(TensorDataset(x, y)))  # a Dataset: read in index order
    assert torch.equal(read[0][0], x) and torch.equal(read[0][1], y)
    with pytest.raises(DataError, match="^evaluation_batches got a str"):
        evaluation_batches("val/")
    with pytest.raises(DataError, match="^evaluation_batches got a int"):
        evaluation_batches(3)


# split_batch ----------------------------------------------------------------------------------
def test_split_batch():
    x, y = _images(3), torch.tensor([2, 0, 1])
    for batch in [(x, y), [x, y], (x, y, "extra"), {"image": x, "label": y},
                  {"input": x, "targets": y}]:
        images, labels = split_batch(batch)
        assert images is x and labels is y
    no_labels = [
        x,
        (x,),
        (x, y.float()),  # not integers
        (x, y[:2]),  # not one per image
        (x, y.view(3, 1)),  # not (N,)
        (x, y > 0),  # booleans
        (x, [2, 0, 1]),  # not a tensor
        (x, torch.full((3,), -1)),  # this package's mark for unlabelled images
        {"images": x},
    ]
    for batch in no_labels:
        images, labels = split_batch(batch)
        assert images is x and labels is None
    with pytest.raises(DataError, match="^the batch is a str, not a tensor"):
        split_batch("x")
    with pytest.raises(DataError, match="^the batch is a tuple whose first element is a list"):
        split_batch(([1.0], y))


def test_docstring_examples_hold():
    result = doctest.testmod(sources_module)
    assert result.attempted >= 6 and result.failed == 0
