from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, fmnist_root, monkeypatch):
    monkeypatch.setenv("ATTNROUND_QUICKSTART_ITERS", "2")
    monkeypatch.setenv("ATTNROUND_QUICKSTART_CALIB", "64")
    monkeypatch.setenv("ATTNROUND_DATA", str(fmnist_root))
    monkeypatch.setenv("ATTNROUND_QUICKSTART_OUT", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    # every ResNet-20 unit learned and logged: the default recipe's 5 (two blocks a unit, the
    # stem and the head joined to them)
    assert "5 loss curves" in text, text  # the notebook's printed output, if it fails
    assert "'layer1.0.conv1': " in text and "size " in text, text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2, text  # the loss curves and the bits-per-layer plot
    assert (tmp_path / "quickstart" / "report.json").is_file()
