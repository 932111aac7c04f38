from fmnist_fixture import make_fashion_mnist

from attnround_pl import cli
from attnround_pl.data.fashion_mnist_files import raw_dir
from attnround_pl.demo import FIXED_ROUNDINGS, run


def test_demo_runs_on_tiny_data(tmp_path, capsys):
    make_fashion_mnist(raw_dir(tmp_path), n_train=1100, n_test=200)
    results = run(tmp_path, epochs=1, w_bits=(4, 2))
    assert set(results) == {"float"} | {f"W{b}A8 {r}" for b in (4, 2) for r in FIXED_ROUNDINGS}
    assert all(0.0 <= v <= 100.0 for v in results.values())
    assert "W4A8" in capsys.readouterr().out


def test_cli_reports_bad_bits_cleanly(tmp_path, capsys):
    make_fashion_mnist(raw_dir(tmp_path), n_train=1100, n_test=200)
    assert cli.main(["demo", "--root", str(tmp_path), "--w-bits", "9"]) == 2
    assert "w_bits=9 is outside 2..8" in capsys.readouterr().err
