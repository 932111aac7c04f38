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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``scripts/test.sh`` runs ``ATTNROUND_TEST_WORKERS``, default 2), give
    each worker and the processes it starts (CLI runs, DDP ranks, the notebook's kernel) an
    equal share of the cores. With torch's default of one thread per core in every worker the
    cores are oversubscribed, and OpenMP's waiting threads then slow a test down many times
    (the notebook test took 470 s instead of 79 s that way on the 2-core machine)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not os.environ.get("PYTEST_XDIST_WORKER") or not workers:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // int(workers))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
