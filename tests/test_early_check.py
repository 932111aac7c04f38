"""Our own settings are checked before Lightning is imported, with the messages of the full
parse; anything the early reading does not understand is left to LightningCLI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from main_config import MAIN, MODEL, RECIPE

from attnround_pl.early_check import ConfigFileError, _Unsure, check_settings, read_settings
from attnround_pl.errors import SettingError
from attnround_pl.mixed.config import MixedPrecisionError
from attnround_pl.quant import QuantConfigError

REPO = Path(__file__).resolve().parents[1]


def test_reads_configs_then_options_in_order(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("quant:\n  w_bits: 3\n  rounding_args: {tau: 0.75}\nrecon:\n  iters: 5\n")
    groups = read_settings([*MAIN, "--config", str(extra), "--quant.rounding_args.tau=0.25",
                            "--recon.iters", "7", "--trainer.devices", "1",
                            "--run.export", "[onnx]", "--quant.drop.prob", "0.5",
                            "--mixed.bit_list", "[3,4]"])
    assert groups["quant"]["w_bits"] == 3 and groups["quant"]["rounding"] == "attention"
    assert groups["quant"]["rounding_args"] == {"tau": 0.25} and groups["recon"]["iters"] == 7
    # the recipe file sets drop.float_inputs; the option sets prob
    assert groups["quant"]["drop"] == {"prob": 0.5, "float_inputs": False}
    assert groups["mixed"] == {"bit_list": [3, 4]}
    assert groups["run"] == {"export": ["onnx"]}
    # a later config replaces the rounding settings of an earlier one, as jsonargparse does
    qdrop = REPO / "configs" / "recipes" / "qdrop.yaml"
    groups = read_settings([*MAIN, "--config", str(qdrop), "--config", str(RECIPE)])
    assert groups["quant"]["rounding_args"] is None  # qdrop's float_inputs true is replaced too
    assert groups["quant"]["drop"] == {"prob": 0.0, "float_inputs": False}
    assert groups["quant"]["act_placement"] == "layers"
    for unsure in (["positional"], ["--config", "quant: {w_bits: 3}"]):
        with pytest.raises(_Unsure):
            read_settings(unsure)


@pytest.mark.parametrize("args, error, message", [
    (["--quant.w_bits", "9"], QuantConfigError, "w_bits=9 is outside 2..8"),
    (["--quant.rounding_args.tau", ".nan"], QuantConfigError,
     "quant.rounding_args.tau=nan must be a finite number"),
    (["--quant.rounding_args.tau", "abc"], QuantConfigError,
     "quant.rounding_args.tau=abc must be a number"),
    (["--quant.rounding", "adaround", "--quant.rounding_args.tau", "0.3"], QuantConfigError,
     "quant.rounding_args: rounding 'adaround' has no setting 'tau'; valid keys: reg_weight, "
     "beta_start, beta_end, warmup"),
    (["--quant.drop.prob", "1.5"], QuantConfigError, "quant.drop.prob=1.5 must be in [0, 1)"),
    (["--mixed.eps2", ".inf"], MixedPrecisionError, "mixed.eps2=inf must be a finite number"),
    (["--mixed.bit_list", "[4,3]"], MixedPrecisionError, "mixed.bit_list=[4, 3] must be strictly"),
    (["--recon.lr_schedule", "linear"], SettingError, "recon.lr_schedule='linear': use one of"),
    (["--run.export", "[tflite]"], SettingError, "unknown export format 'tflite'"),
    (["--quant.tau", "0.25"], SettingError,
     "quant.tau is now quant.rounding_args.tau: write --quant.rounding_args.tau VALUE, or "
     "quant: {rounding_args: {tau: VALUE}} in YAML"),
    (["--quant.adaround_warmup=0.3"], SettingError,
     "quant.adaround_warmup is now quant.rounding_args.warmup"),
    (["--quant.drop_prob", "0.5"], SettingError, "quant.drop_prob is now quant.drop.prob"),
    (["--quant.mixed.bit_list", "[3,4]"], SettingError,
     "quant.mixed.bit_list is now mixed.bit_list: write --mixed.bit_list VALUE"),
])
def test_refuses_what_validate_refuses(args, error, message):
    with pytest.raises(error, match="^" + re.escape(message)):
        check_settings([*MAIN, *args])


def test_a_config_file_it_cannot_read_is_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("quant:\n  w_bits: [3\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "old.yaml").write_text("quant:\n  tau: 0.25\n  mixed:\n    bit_list: [3, 4]\n")
    cases = [
        ("/no/such.yaml", "--config file '/no/such.yaml' does not exist"),
        (str(tmp_path), f"--config '{tmp_path}' is a folder, not a YAML file"),
        (str(tmp_path / "bad.yaml"), f"--config file '{tmp_path / 'bad.yaml'}' is not valid "
         "YAML: expected ',' or ']', but got '<stream end>' (line 3, column 1)"),
        (str(tmp_path / "list.yaml"), f"--config file '{tmp_path / 'list.yaml'}' holds a YAML "
         "list, not a mapping of settings"),
        (str(tmp_path / "old.yaml"), "quant.tau is now quant.rounding_args.tau"),
    ]
    for path, message in cases:
        with pytest.raises(SettingError) as info:
            check_settings([*MAIN, "--config", path])
        assert str(info.value).startswith(message), str(info.value)
        assert "\n" not in str(info.value)
    assert issubclass(ConfigFileError, SettingError)


def test_leaves_what_it_cannot_read_to_lightningcli():
    for args in (["--quant.w_bits", "four"], ["--quant.w_bit", "9"], ["--recon.lr", "1e-3"],
                 ["--quant.w_bits", "9", "--print_config"], ["--mixed.eps2", "x"]):
        check_settings([*MAIN, *args])  # no error here: the full parse decides


def test_a_refused_setting_does_not_import_lightning():
    code = ("import sys; from attnround_pl.cli import main; "
            f"rc = main(['calibrate', '--config', {str(MODEL)!r}, '--config', {str(RECIPE)!r}, "
            "'--quant.w_bits', '9']); "
            "print(rc, 'lightning' in sys.modules, 'torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert done.stdout.split() == ["2", "False", "False"]
    assert done.stderr.strip().splitlines() == [
        "attnround-pl calibrate: error: w_bits=9 is outside 2..8"]
