import pytest
from fmnist_fixture import make_fashion_mnist

from attnround_pl.data import fashion_mnist_files as fm


def test_unpacks_debian_layout_into_torchvision_layout(tmp_path):
    debian = tmp_path / "debian"
    make_fashion_mnist(debian, gz=True)
    root = tmp_path / "data"
    assert fm.unpack_debian(root, debian)
    assert fm.is_prepared(root)
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(root), train=True)
    assert len(ds) == 256 and ds[13][1] == 3


def test_prepare_reports_already_present(tmp_path):
    make_fashion_mnist(fm.raw_dir(tmp_path))
    assert fm.prepare(tmp_path) == "already present"


def test_prepare_without_any_source_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fm, "unpack_debian", lambda root: False)

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", no_network)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        fm.prepare(tmp_path / "data")
    assert fm.main(["--root", str(tmp_path / "data")]) == 1
