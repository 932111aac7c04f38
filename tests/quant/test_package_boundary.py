"""quant/ is the pure-PyTorch core: it imports neither Lightning nor the packages around it
(mixed precision hands it per-layer bits; file formats live in export/)."""

import re
import subprocess
import sys
from pathlib import Path

QUANT = Path(__file__).resolve().parents[2] / "attnround_pl" / "quant"


def test_no_module_of_quant_imports_lightning_mixed_export_or_calib():
    imports = re.compile(r"^\s*(from|import)\s+(\S+)", re.M)
    for path in QUANT.glob("*.py"):
        for _, name in imports.findall(path.read_text()):
            assert not re.match(r"\.\.(mixed|export|calib)\b|lightning", name), (path.name, name)
    code = ("import sys, attnround_pl.quant as q\n"
            "for name in q.__all__: getattr(q, name)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('attnround_pl.mixed', "
            "'attnround_pl.export', 'attnround_pl.calib', 'lightning'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stdout.strip() == "[]"
