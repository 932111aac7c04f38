"""Our own settings are checked before Lightning is imported, with the messages of the full
parse; anything the early reading does not understand is left to LightningCLI."""

import subprocess
import sys
from pathlib import Path

import pytest

from attnround_pl.early_check import _Unsure, check_settings, read_settings
from attnround_pl.errors import SettingError
from attnround_pl.quant import QuantConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "resnet20_w4a4.yaml")


def test_reads_configs_then_options_in_order(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("quant:\n  w_bits: 3\nrecon:\n  iters: 5\n")
    groups = read_settings(["--config", CONFIG, "--config", str(extra), "--quant.tau=0.25",
                            "--recon.iters", "7", "--trainer.devices", "1",
                            "--run.export", "[onnx]"])
    assert groups["quant"]["w_bits"] == 3 and groups["quant"]["a_bits"] == 4
    assert groups["quant"]["tau"] == 0.25 and groups["recon"]["iters"] == 7
    assert groups["run"] == {"export": ["onnx"]}
    for unsure in (["positional"], ["--quant.mixed.budget_bits", "3"], ["--config", "/no/such"]):
        with pytest.raises(_Unsure):
            read_settings(unsure)


@pytest.mark.parametrize("args, error, message", [
    (["--quant.w_bits", "9"], QuantConfigError, "w_bits=9 is outside 2..8"),
    (["--quant.tau", ".nan"], QuantConfigError, "quant.tau=nan must be a finite number"),
    (["--recon.lr_schedule", "linear"], SettingError, "recon.lr_schedule='linear': use one of"),
    (["--run.export", "[tflite]"], SettingError, "unknown export format 'tflite'"),
])
def test_refuses_what_validate_refuses(args, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_settings(["--config", CONFIG, *args])


def test_leaves_what_it_cannot_read_to_lightningcli():
    for args in (["--quant.w_bits", "four"], ["--quant.w_bit", "9"], ["--recon.lr", "1e-3"],
                 ["--quant.w_bits", "9", "--print_config"], ["--quant.mixed.eps2", ".inf"]):
        check_settings(["--config", CONFIG, *args])  # no error here: the full parse decides


def test_a_refused_setting_does_not_import_lightning():
    code = ("import sys; from attnround_pl.cli import main; "
            f"rc = main(['calibrate', '--config', {CONFIG!r}, '--quant.w_bits', '9']); "
            "print(rc, 'lightning' in sys.modules, 'torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert done.stdout.split() == ["2", "False", "False"]
    assert done.stderr.strip().splitlines() == [
        "attnround-pl calibrate: error: w_bits=9 is outside 2..8"]
