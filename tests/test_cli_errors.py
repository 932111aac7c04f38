"""Bad input a new user hits on the command line (issue 30): one line, exit status 2, nothing
written; ``calibrate --help`` leads with our groups; ``--help`` loads neither torch nor
Lightning."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from main_config import MAIN
from torch import nn

import attnround_pl
from attnround_pl import cli
from attnround_pl.calib.pipeline import RunConfig
from attnround_pl.calib.sequencer import ReconConfig
from attnround_pl.errors import SettingError, check_finite
from attnround_pl.mixed.config import MixedConfig
from attnround_pl.quant import QuantConfig, QuantConfigError

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("attnround-pl calibrate: error: "), err
    return err[0].removeprefix("attnround-pl calibrate: error: ")


def refused(capsys, tmp_path, *args: str, yaml: str | None = None) -> str:
    """Run ``calibrate`` over the shipped config (plus a YAML file, plus options); it must
    refuse with exit status 2, one line on stderr and no run folder; return the message."""
    extra = []
    if yaml is not None:
        (tmp_path / "typo.yaml").write_text(yaml)
        extra = ["--config", str(tmp_path / "typo.yaml")]
    out = tmp_path / "runs"
    argv = ["calibrate", *MAIN, *extra, "--run.out_dir", str(out), *args]
    assert cli.main(argv) == 2
    assert not out.exists()  # refused before anything was written
    return one_error_line(capsys)


def test_a_misspelt_key_in_yaml_names_it_and_the_closest_key(tmp_path, capsys):
    message = refused(capsys, tmp_path, yaml="quant:\n  w_bit: 4\n")
    assert message == "unknown key quant.w_bit; did you mean w_bits?"
    message = refused(capsys, tmp_path, yaml="mixed:\n  bit_lst: [3, 4]\n")
    assert message == "unknown key mixed.bit_lst; did you mean bit_list?"
    message = refused(capsys, tmp_path, yaml="quant:\n  drop:\n    prob: 0.5\n    probb: 1\n")
    assert message == "unknown key quant.drop.probb; did you mean prob?"


# a key of an earlier version -> the one line naming the key that replaced it
MOVED = [
    ("quant:\n  tau: 0.25\n", [], "quant.tau is now quant.rounding_args.tau: write "
     "--quant.rounding_args.tau VALUE, or quant: {rounding_args: {tau: VALUE}} in YAML"),
    (None, ["--quant.tau", "0.25"], "quant.tau is now quant.rounding_args.tau: write "
     "--quant.rounding_args.tau VALUE, or quant: {rounding_args: {tau: VALUE}} in YAML"),
    (None, ["--quant.adaround_beta_end=3"], "quant.adaround_beta_end is now "
     "quant.rounding_args.beta_end: write --quant.rounding_args.beta_end VALUE, or "
     "quant: {rounding_args: {beta_end: VALUE}} in YAML"),
    ("quant:\n  drop_prob: 0.5\n", [], "quant.drop_prob is now quant.drop.prob: write "
     "--quant.drop.prob VALUE, or quant: {drop: {prob: VALUE}} in YAML"),
    ("quant:\n  mixed:\n    bit_list: [3, 4]\n", [], "quant.mixed.bit_list is now "
     "mixed.bit_list: write --mixed.bit_list VALUE, or mixed: {bit_list: VALUE} in YAML"),
    (None, ["--quant.mixed.budget_bits", "4"], "quant.mixed.budget_bits is now "
     "mixed.budget_bits: write --mixed.budget_bits VALUE, or mixed: {budget_bits: VALUE} in YAML"),
]


@pytest.mark.parametrize("yaml, args, message", MOVED, ids=[str(r[1] or r[0]) for r in MOVED])
def test_a_key_of_an_earlier_version_names_the_key_now(tmp_path, capsys, yaml, args, message):
    assert refused(capsys, tmp_path, *args, yaml=yaml) == message


def test_moved_keys_are_named_by_the_full_parse_too(tmp_path, capsys):
    """--print_config skips the early check: LightningCLI's refusal says the same."""
    (tmp_path / "old.yaml").write_text("quant:\n  tau: 0.25\n")
    for extra in (["--config", str(tmp_path / "old.yaml")], ["--quant.drop_prob", "0.5"]):
        assert cli.main(["calibrate", *MAIN, *extra, "--print_config"]) == 2
        assert " is now quant." in one_error_line(capsys)


def test_rounding_settings_of_another_rounding_are_refused_with_the_valid_keys(tmp_path, capsys):
    message = refused(capsys, tmp_path, "--quant.rounding", "adaround",
                      "--quant.rounding_args.tau", "0.3")
    assert message == (
        "quant.rounding_args: rounding 'adaround' has no setting 'tau'; valid keys: reg_weight, "
        "beta_start, beta_end, warmup (tau is attention's: after changing quant.rounding give "
        "its own rounding_args, or null for its defaults)"
    )
    assert refused(capsys, tmp_path, "--quant.rounding", "floor", "--quant.rounding_args",
                   "{warmup: 0.1}") == (
        "quant.rounding_args: rounding 'floor' has no setting 'warmup'; it takes none (warmup "
        "is adaround's: after changing quant.rounding give its own rounding_args, or null for "
        "its defaults)")


def test_a_bad_config_file_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("quant:\n  w_bits: [3\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    for name, message in (("bad.yaml", "is not valid YAML: expected ',' or ']'"),
                          ("list.yaml", "holds a YAML list, not a mapping of settings")):
        for extra in ([], ["--print_config"]):  # early check, and the full parse
            assert cli.main(["calibrate", *MAIN, "--config", str(tmp_path / name), *extra]) == 2
            assert one_error_line(capsys) .startswith(f"--config file '{tmp_path / name}' "
                                                      f"{message}")


def test_a_misspelt_option_is_refused_not_expanded(tmp_path, capsys):
    # argparse's abbreviations would read --quant.w_bit as --quant.w_bits and run
    assert refused(capsys, tmp_path, "--quant.w_bit", "4") == (
        "unknown option --quant.w_bit; did you mean w_bits?"
    )
    assert refused(capsys, tmp_path, "--quant.w_bit=4") == (
        "unknown option --quant.w_bit; did you mean w_bits?"
    )
    assert refused(capsys, tmp_path, "--trainer.devicez", "1") == (
        "unknown option --trainer.devicez; did you mean devices?"
    )


def test_an_unknown_key_with_no_close_match_lists_the_valid_ones(tmp_path, capsys):
    message = refused(capsys, tmp_path, "--foo.bar", "1")
    assert message == (
        "unknown option --foo.bar; the top level takes: seed_everything, quant, mixed, recon, "
        "run, trainer, model, data"
    )
    message = refused(capsys, tmp_path, "--quant.zzz", "1")
    assert message.startswith("unknown option --quant.zzz; quant takes: w_bits, a_bits, ")


def test_an_unknown_top_level_group(tmp_path, capsys):
    message = refused(capsys, tmp_path, yaml="quantt:\n  w_bits: 3\n")
    assert message == "unknown key quantt.w_bits; did you mean quant?"


def test_a_misspelt_init_arg_of_the_data_module(tmp_path, capsys):
    message = refused(capsys, tmp_path, "--data.init_args.calib_sise", "8")
    assert message == (
        "unknown key data.init_args.calib_sise (attnround_pl.data.FashionMNISTDataModule does "
        "not take it); did you mean calib_size?"
    )


WRONG_VALUES = [
    ("quant:\n  w_bits: four\n", [], "quant.w_bits=four must be an integer"),
    ("quant:\n  a_bits: 3.5\n", [], "quant.a_bits=3.5 must be an integer"),
    ("quant:\n  rounding_args:\n    tau: nan\n", [],
     "quant.rounding_args.tau=nan must be a finite number"),
    ("quant:\n  rounding_args: {tau: .nan}\n", [],
     "quant.rounding_args.tau=nan must be a finite number"),
    ("quant:\n  rounding_args: {tau: inf}\n", [],
     "quant.rounding_args.tau=inf must be a finite number"),
    ("quant:\n  rounding_args: {tau: -.inf}\n", [],
     "quant.rounding_args.tau=-inf must be a finite number"),
    ("quant:\n  rounding_args: 0.5\n", [],
     "quant.rounding_args=0.5 must be a mapping ({key: value}) (or null)"),
    (None, ["--quant.rounding_args.tau", "nan"],
     "quant.rounding_args.tau=nan must be a finite number"),
    (None, ["--quant.rounding_args.tau=-inf"],
     "quant.rounding_args.tau=-inf must be a finite number"),
    (None, ["--quant.rounding_args.tau", "abc"], "quant.rounding_args.tau=abc must be a number"),
    (None, ["--quant.drop.prob", "abc"], "quant.drop.prob=abc must be a number"),
    (None, ["--quant.drop.prob", ".nan"], "quant.drop.prob=nan must be a finite number"),
    (None, ["--mixed.eps2", ".inf"], "mixed.eps2=inf must be a finite number"),
    (None, ["--recon.lr", ".nan"], "recon.lr=nan must be a finite number"),
    (None, ["--run.progress", "maybe"], "run.progress=maybe must be true or false"),
    (None, ["--mixed.budget_bits", "x"], "mixed.budget_bits=x must be an integer (or null)"),
    (None, ["--mixed.bit_list", "[a]"],
     "mixed.bit_list=['a'] must be a list of integers (or null)"),
    (None, ["--recon.lr", "-inf"],
     "--recon.lr needs a value (write one that starts with '-' as --recon.lr=VALUE)"),
]


@pytest.mark.parametrize("yaml, args, message", WRONG_VALUES, ids=[r[2] for r in WRONG_VALUES])
def test_a_value_of_the_wrong_type_is_one_line(tmp_path, capsys, yaml, args, message):
    assert refused(capsys, tmp_path, *args, yaml=yaml) == message


def test_nothing_to_calibrate_says_what_to_give(capsys):
    assert cli.main(["calibrate"]) == 2
    message = one_error_line(capsys)
    assert message.startswith("nothing to calibrate: give --config FILE")
    assert "--model.arch" in message and "--model.net" in message and "--data" in message
    assert cli.main(["calibrate", "--model.arch", "resnet20"]) == 2
    assert one_error_line(capsys).startswith("no data module: give --data CLASS")


def test_a_config_file_that_is_not_there(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert cli.main(["calibrate", "--config", str(missing)]) == 2
    assert one_error_line(capsys) == f"--config file '{missing}' does not exist"


def test_a_stray_argument(tmp_path, capsys):
    assert refused(capsys, tmp_path, "w_bits=3").startswith("unexpected argument 'w_bits=3'")


def test_a_data_class_that_does_not_import(tmp_path, capsys):
    message = refused(capsys, tmp_path, "--data", "no_such_pkg.Data")
    assert message == "data: class_path 'no_such_pkg.Data': No module named 'no_such_pkg'"


def test_calibrate_help_leads_with_our_groups_and_drops_the_optimizer(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["calibrate", "--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    options = [line.split()[0] for line in shown.splitlines() if line.startswith("  -")]
    groups = [option.rstrip(",") for option in options if "." not in option]
    assert groups == ["-h", "-c", "--print_config", "--seed_everything", "--quant", "--mixed",
                      "--recon", "--run", "--trainer", "--model", "--data"]
    assert "--optimizer" not in shown and "--lr_scheduler" not in shown
    assert "torch.nn.Identity" not in shown  # model.net's list of every nn.Module subclass
    assert "--quant.w_bits" in shown and "--recon.iters" in shown and "--run.out_dir" in shown
    assert "--quant.rounding_args" in shown and "--quant.drop.prob" in shown
    assert "--mixed.bit_list" in shown


def test_export_formats_in_the_help_are_the_export_jobs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    assert "one of: onnx, state" in capsys.readouterr().out


def test_settings_refuse_nan_and_infinity_in_python_too(tmp_path):
    nan_tau = r"^quant\.rounding_args\.tau=nan must be a finite number$"
    with pytest.raises(QuantConfigError, match=nan_tau):
        QuantConfig(rounding_args={"tau": float("nan")}).validate()
    with pytest.raises(QuantConfigError, match=r"^quant\.rounding_args\.beta_end=inf must be a"):
        QuantConfig(rounding="adaround", rounding_args={"beta_end": math.inf}).validate()
    with pytest.raises(SettingError, match=r"^mixed\.budget_mb=-inf must be a fin"):
        MixedConfig(bit_list=[3, 4], budget_mb=-math.inf).validate()
    with pytest.raises(SettingError, match=r"^mixed\.eps2=nan must be a finite number"):
        MixedConfig(eps2=float("nan")).validate()  # checked even when mixed is off
    with pytest.raises(SettingError, match=r"^recon\.act_lr=inf must be a finite number$"):
        ReconConfig(act_lr=math.inf).validate()
    # validate() resolves only the border left to the rounding: learning rounding -> aquant
    assert QuantConfig().validate() == QuantConfig(act_border="aquant")
    assert ReconConfig().validate().lr > 0
    assert RunConfig().validate() == RunConfig()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    images = torch.randn(8, 3, 8, 8)
    with pytest.raises(QuantConfigError, match=nan_tau):
        attnround_pl.quantize(model, images, quant=QuantConfig(rounding_args={"tau": math.nan}),
                              out_dir=tmp_path, progress=False)
    with pytest.raises(SettingError, match=r"^mixed\.bit_list=\[4, 3\] must be strictly"):
        attnround_pl.quantize(model, images, mixed={"bit_list": [4, 3]}, out_dir=tmp_path,
                              progress=False)
    assert list(tmp_path.iterdir()) == []  # refused before any file


def test_check_finite_names_the_group_and_takes_the_error_class():
    from dataclasses import dataclass

    @dataclass
    class Settings:
        ratio: float = 0.5
        count: int = 3
        name: str = "x"

    check_finite(Settings(), "demo")  # finite floats, ints and strings pass
    with pytest.raises(QuantConfigError, match=r"^demo\.ratio=nan must be a finite number$"):
        check_finite(Settings(ratio=float("nan")), "demo", QuantConfigError)


def _modules_after(code: str) -> dict[str, bool]:
    """Which heavy packages a fresh interpreter has imported after ``code``."""
    heavy = ("torch", "lightning", "torchvision", "onnx", "onnxruntime", "matplotlib", "rich")
    env = {k: v for k, v in os.environ.items() if k != "JSONARGPARSE_DEPRECATION_WARNINGS"}
    probe = (f"{code}\nimport json, os, sys\n"
             f"print(json.dumps({{m: m in sys.modules for m in {heavy!r}}}))\n"
             "print(os.environ.get('JSONARGPARSE_DEPRECATION_WARNINGS'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *_, loaded, env_var = done.stdout.strip().splitlines()
    return {**json.loads(loaded), "env_var_set": env_var != "None"}


def test_importing_the_package_and_the_cli_loads_no_heavy_module():
    loaded = _modules_after(
        "import attnround_pl, attnround_pl.cli, attnround_pl.calib, attnround_pl.quant, "
        "attnround_pl.data, attnround_pl.models, attnround_pl.mixed, attnround_pl.errors, "
        "attnround_pl.export"
    )
    assert not any(loaded.values()), loaded  # no side effect either: the env var is main's


def test_help_and_evaluate_help_answer_without_torch_or_lightning():
    loaded = _modules_after(
        "import contextlib, io\n"
        "from attnround_pl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
        "    for command in ('evaluate', 'export'):\n"
        "        try:\n"
        "            main([command, '--help'])\n"
        "        except SystemExit as stop:\n"
        "            assert stop.code == 0"
    )
    assert loaded.pop("env_var_set")  # main() sets it (jsonargparse's deprecation warnings)
    assert not any(loaded.values()), loaded


def test_names_of_the_lazy_packages_resolve():
    from attnround_pl import calib, data, export, mixed, models, quant

    for package in (calib, data, export, mixed, models, quant):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
        assert set(package.__all__) <= set(dir(package))
        with pytest.raises(AttributeError, match="has no attribute 'nope'"):
            package.nope  # noqa: B018
