import subprocess
import sys

PROBE = r"""
import os, warnings
import torch, lightning.pytorch, matplotlib  # what the package's own imports bring along
state = lambda: (list(warnings.filters), matplotlib.rcParams._get_backend_or_none(),
                 dict(os.environ))
before = state()
import attnround_pl, attnround_pl.cli, attnround_pl.calib.pipeline
import attnround_pl.calib.reconstruction, attnround_pl.mixed.allocation, attnround_pl.mixed.report
import attnround_pl.export.qdq_onnx, attnround_pl.export.verify, attnround_pl.quant.model
after = state()
assert before[0] == after[0], [f for f in after[0] if f not in before[0]]
assert before[1] == after[1], (before[1], after[1])
assert before[2] == after[2], set(after[2].items()) ^ set(before[2].items())
print("unchanged")
"""


def test_importing_the_package_changes_no_global_state():
    """No warning filter, matplotlib backend or environment variable is set at import (the
    command line quiets Lightning when it runs, not when it is imported)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "unchanged"
