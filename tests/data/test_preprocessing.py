"""What the data applied to an image, as saved and exported models record it."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attnround_pl.data import (
    DataError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    Preprocessing,
    calibrated_preprocessing,
    preprocessing_of,
)
from attnround_pl.data.modules import FMNIST_MEAN, FMNIST_STD, GRAY_MEAN, GRAY_STD


class OwnData(pl.LightningDataModule):
    """A user's data module that says how it preprocesses."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def preprocessing(self):
        return self.answer


def test_our_data_modules_are_known_without_reading_a_file(tmp_path):
    fmnist = preprocessing_of(FashionMNISTDataModule(root=str(tmp_path / "unused")))
    assert fmnist == Preprocessing(input_shape=(1, 28, 28), channel_order="L", mean=FMNIST_MEAN,
                                   std=FMNIST_STD, pixel_range=(0.0, 1.0))
    gray = preprocessing_of(ImageFolderDataModule("photos", channels=1, resize=None, crop=64))
    assert gray == Preprocessing(input_shape=(1, 64, 64), channel_order="L", mean=GRAY_MEAN,
                                 std=GRAY_STD, pixel_range=(0.0, 1.0), crop=64)
    rgb = preprocessing_of(ImageFolderDataModule("photos", crop=None, mean=[0.5] * 3,
                                                 std=[0.25] * 3))
    assert rgb.input_shape is None  # crop=None: the images' own size, known after setup()
    assert (rgb.channel_order, rgb.mean, rgb.resize, rgb.crop) == ("RGB", (0.5,) * 3, 256, None)
    assert rgb.transform == (
        "convert to RGB -> Resize(256) -> ToTensor (pixels / 255) -> Normalize(mean, std)"
    )
    uncropped = ImageFolderDataModule("photos", crop=None)
    assert calibrated_preprocessing(uncropped, (8, 3, 40, 30)).input_shape == (3, 40, 30)


def test_tensors_and_loaders_record_only_the_calibrated_shape():
    images = torch.rand(4, 3, 8, 8)
    loader = DataLoader(TensorDataset(images), batch_size=2)
    assert preprocessing_of(images) is None and preprocessing_of(loader) is None
    recorded = calibrated_preprocessing(loader, images.shape)
    assert recorded == Preprocessing(input_shape=(3, 8, 8))
    assert recorded.to_dict() == {"input_shape": [3, 8, 8], "channel_order": None, "mean": None,
                                  "std": None, "pixel_range": None, "resize": None, "crop": None,
                                  "transform": None}


def test_a_users_data_module_says_its_own_preprocessing():
    own = {"channel_order": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    recorded = calibrated_preprocessing(OwnData(own), (2, 3, 16, 16))
    assert recorded.input_shape == (3, 16, 16) and recorded.std == (0.2, 0.2, 0.2)
    given = Preprocessing(channel_order="L", mean=(0.1,), std=(0.3,))
    assert preprocessing_of(OwnData(given)) is given
    assert preprocessing_of(OwnData(None)) is None
    with pytest.raises(DataError, match=r"OwnData.preprocessing\(\) returned a str: return a "):
        preprocessing_of(OwnData("RGB"))
    with pytest.raises(DataError, match=r"unknown key\(s\) \['means'\]"):
        preprocessing_of(OwnData({"means": [0.5]}))


@pytest.mark.parametrize(("values", "message"), [
    ({"channel_order": "BGR"}, "channel_order='BGR': use one of RGB, L"),
    ({"channel_order": "RGB", "input_shape": [1, 28, 28]}, "'RGB' has 3 channel(s), input_shape"),
    ({"input_shape": [1, 28, 28], "mean": [0.5, 0.5], "std": [1, 1]}, "mean has 2 value(s) for 1"),
    ({"mean": [0.5], "std": [0.0]}, "std=[0.0] must be positive"),
    ({"mean": [0.5]}, "needs both mean and std, or neither"),
    ({"mean": "0.5", "std": [1]}, "mean='0.5' must be a list of numbers"),
    ({"mean": ["a"], "std": [1]}, "mean=['a'] must be a list of numbers"),
    ({"crop": 0}, "crop=0 must be a positive int or None"),
    ({"pixel_range": [1, 0]}, "pixel_range=[1.0, 0.0] must be [low, high]"),
])
def test_contradicting_values_are_one_data_error(values, message):
    with pytest.raises(DataError) as refused:
        Preprocessing.from_dict(values)
    assert message in str(refused.value) and "\n" not in str(refused.value)
