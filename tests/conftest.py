import os
from pathlib import Path

import pytest
from fmnist_fixture import make_fashion_mnist

from attnround_pl.data.fashion_mnist_files import prepare, raw_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    """The real Fashion-MNIST (README's commands put it there before the tests run)."""
    root = Path(os.environ.get("ATTNROUND_DATA", REPO / "data"))
    prepare(root)
    return root


@pytest.fixture
def tiny_fmnist(tmp_path) -> Path:
    make_fashion_mnist(raw_dir(tmp_path), n_train=200, n_test=60)
    return tmp_path
