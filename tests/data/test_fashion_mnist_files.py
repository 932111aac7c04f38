import pytest
from fmnist_fixture import make_fashion_mnist

from attnround_pl.cli import main
from attnround_pl.data import DataError, FashionMNISTDataModule
from attnround_pl.data import fashion_mnist_files as fm
from attnround_pl.errors import InputError

REPO = fm.Path(__file__).resolve().parents[2]


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
    assert fm.prepare(tmp_path) == f"Fashion-MNIST: already in {fm.raw_dir(tmp_path)}"


def _no_source(tmp_path, monkeypatch, message="network unreachable"):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fm, "unpack_debian", lambda root: False)

    def no_network(root, train, download):  # torchvision makes its folder, then fails
        fm.raw_dir(root).mkdir(parents=True, exist_ok=True)
        raise OSError(message)

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", no_network)


def test_prepare_without_any_source_names_the_fix(tmp_path, monkeypatch):
    _no_source(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        fm.prepare(tmp_path / "data")
    assert not (tmp_path / "data").exists()  # the folders it made are gone again
    assert fm.main(["--root", str(tmp_path / "data")]) == 1


def test_missing_files_are_one_line_and_nothing_is_written(tmp_path):
    root = tmp_path / "no_such"
    data = FashionMNISTDataModule(root=str(root), calib_size=8)
    with pytest.raises(DataError) as refused:
        data.prepare_data()
    assert isinstance(refused.value, InputError)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"Fashion-MNIST is not in {fm.raw_dir(root)}: ")
    assert "--data.init_args.download true" in message and "about 55 MB" in message
    assert f"python -m attnround_pl.data --root {root}" in message
    with pytest.raises(DataError):
        data.setup()  # setup without prepare_data is refused the same way
    assert not root.exists()


def test_failed_download_is_one_data_error_line(tmp_path, monkeypatch):
    _no_source(tmp_path, monkeypatch, message="HTTP Error 503:\nService Unavailable")
    root = tmp_path / "data"
    data = FashionMNISTDataModule(root=str(root), download=True)
    with pytest.raises(DataError) as failed:
        data.prepare_data()
    message = str(failed.value)
    assert "\n" not in message
    assert "torchvision's download failed (HTTP Error 503: Service Unavailable)" in message
    assert not root.exists()


@pytest.mark.skipif(not fm.DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist absent")
def test_download_unpacks_debian_package_and_says_so(tmp_path, capsys):
    root = tmp_path / "fresh"
    data = FashionMNISTDataModule(root=str(root), download=True)
    data.prepare_data()
    assert capsys.readouterr().out == (
        f"Fashion-MNIST: unpacked 4 files (55 MB) into {fm.raw_dir(root)} from {fm.DEBIAN_DIR}\n"
    )
    assert fm.is_prepared(root)
    assert sorted(p.name for p in fm.raw_dir(root).iterdir()) == sorted(fm.FILES)
    assert len(data.eval_split()) == 10_000
    data.prepare_data()  # already there: nothing written, nothing printed
    assert capsys.readouterr().out == ""


def test_cli_refuses_a_root_without_the_files_in_one_line(tmp_path, capsys):
    root = tmp_path / "no_such"
    status = main(["calibrate", "--config", str(REPO / "configs" / "models" / "resnet20.yaml"),
                   "--config", str(REPO / "configs" / "recipes" / "attention.yaml"),
                   "--data.init_args.root", str(root), "--run.out_dir", str(tmp_path / "runs"),
                   "--trainer.accelerator", "cpu"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"Fashion-MNIST is not in {fm.raw_dir(root)}: " in err
    assert "--data.init_args.download true" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
