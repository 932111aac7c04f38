"""README's Python quickstart runs exactly as printed."""

from pathlib import Path

from doc_blocks import python_block

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart() -> str:
    return python_block(README, "python-quickstart")


def test_python_quickstart_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(quickstart(), "README.md", "exec"), namespace)
    qmodel = namespace["qmodel"]
    assert (tmp_path / "resnet18_w4a4.pt").is_file()
    fidelity = qmodel.report["quant_fidelity"]["output"]
    assert fidelity["samples"] == 64 and fidelity["sqnr_db"] < float("inf")
    assert "'sqnr_db'" in capsys.readouterr().out
    assert all(u["iters"] == 100 for u in qmodel.report["units"] if u["learned"])
