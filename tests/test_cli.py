import json
from pathlib import Path

import pytest
import yaml

from attnround_pl import cli

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "resnet20_w4a4.yaml"


def test_print_config_with_override(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["calibrate", "--config", str(CONFIG), "--quant.rounding", "adaround",
                  "--quant.w_bits", "3", "--print_config"])
    assert stop.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["quant"]["rounding"] == "adaround" and cfg["quant"]["w_bits"] == 3
    assert cfg["quant"]["a_bits"] == 4 and cfg["recon"]["iters"] == 2000
    assert cfg["model"]["arch"] == "resnet20"


def test_every_config_parses(capsys):
    for path in sorted(CONFIG.parent.glob("*.yaml")):
        with pytest.raises(SystemExit) as stop:
            cli.main(["calibrate", "--config", str(path), "--print_config"])
        assert stop.value.code == 0, path
        assert "quant:" in capsys.readouterr().out


def test_calibrate_then_evaluate(tmp_path, tiny_fmnist, capsys):
    args = ["calibrate", "--config", str(CONFIG), "--model.weights", "null",
            "--data.init_args.root", str(tiny_fmnist), "--data.init_args.calib_size", "20",
            "--recon.iters", "2", "--recon.batch_size", "4", "--run.out_dir", str(tmp_path),
            "--run.name", "cli", "--run.progress", "false", "--quant.w_bits", "3"]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["w_bits"] == 3 and report["rounding"] == "attention"
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["quant"]["w_bits"] == 3
    capsys.readouterr()
    assert cli.main(["evaluate", "--run", str(tmp_path / "cli")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["quant_top1"] == pytest.approx(report["quant_top1"])
    assert cli.main(["export", "--run", str(tmp_path / "cli"), "--format", "onnx"]) == 0
    shown = capsys.readouterr().out
    assert "onnxruntime top-1" in shown and "differing argmax" in shown
    exported = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert exported["onnx_argmax_mismatch"] == 0
    assert exported["onnx_top1"] == pytest.approx(report["quant_top1"])
    report = exported
    assert cli.main(["export", "--run", str(tmp_path / "cli"), "--format", "tflite"]) == 2
    assert "unknown export format 'tflite'" in capsys.readouterr().err
    # a second calibrate into the same folder is refused, the finished run is kept
    assert cli.main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert json.loads((tmp_path / "cli" / "report.json").read_text()) == report


def test_clear_errors(tmp_path, capsys):
    assert cli.main(["calibrate", "--config", str(CONFIG), "--quant.w_bits", "9",
                     "--run.out_dir", str(tmp_path)]) == 2
    assert "w_bits=9 is outside 2..8" in capsys.readouterr().err
    assert cli.main(["calibrate", "--config", str(CONFIG), "--model.arch", "vgg99",
                     "--run.out_dir", str(tmp_path)]) == 2
    assert "unknown model 'vgg99'" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", str(tmp_path / "nothing")]) == 2
    assert f"run folder {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("{}")
    assert cli.main(["export", "--run", str(tmp_path / "half"), "--format", "state"]) == 2
    assert "holds no report.json: its calibration did not finish" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2


def _bad_input_files(tmp_path: Path, tiny_fmnist: Path) -> dict[str, str]:
    """Files the bad-input rows point at."""
    import torch

    from attnround_pl.models import build_model

    files = {"tiny": str(tiny_fmnist)}
    (tmp_path / "empty").mkdir()
    files["empty"] = str(tmp_path / "empty")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a torch file")
    files["corrupt"] = str(tmp_path / "corrupt.pt")
    torch.save(build_model("mobilenetv2", weights=None).state_dict(), tmp_path / "other.pt")
    files["other_arch"] = str(tmp_path / "other.pt")
    state = build_model("resnet20", weights=None).state_dict()
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    files["nan"] = str(tmp_path / "nan.pt")
    for name, holds in (("finished", "report.json"), ("unfinished", "progress.pt")):
        (tmp_path / name).mkdir()
        (tmp_path / name / holds).write_text("{}")
    files["out"] = str(tmp_path)
    return files


# (row of README's bad-input table, arguments, what the one-line error says)
BAD_INPUTS = [
    ("bits outside 2..8", ["--quant.w_bits", "9"], "w_bits=9 is outside 2..8"),
    ("activation bits outside", ["--quant.a_bits", "1"], "a_bits=1 is outside 2..8"),
    ("unknown rounding", ["--quant.rounding", "round"], "unknown rounding 'round'; valid names"),
    ("unknown model", ["--model.arch", "vgg99"], "unknown model 'vgg99'; available:"),
    ("missing data root", ["--data", "attnround_pl.data.ImageFolderDataModule",
     "--data.init_args.train_root", "/no/such", "--data.init_args.val_root", "/no/such"],
     "data.train_root='/no/such' is not a folder"),
    ("empty data root", ["--data", "attnround_pl.data.ImageFolderDataModule",
     "--data.init_args.train_root", "{empty}", "--data.init_args.val_root", "{empty}"],
     "holds no usable images"),
    ("fewer calibration images than asked", ["--data.init_args.root", "{tiny}",
     "--data.init_args.calib_size", "5000"], "calibration set: asked for 5000"),
    ("no calibration images asked for", ["--data.init_args.calib_size", "0"],
     "data.calib_size=0 must be positive"),
    ("loader batch of 0", ["--data.init_args.batch_size", "0"],
     "data.batch_size=0 must be positive"),
    ("embedded model given a weights file", ["--model.weights", "{corrupt}"],
     "the embedded models take weights 'DEFAULT' (their committed checkpoint) or null"),
    ("corrupt checkpoint", ["--model.checkpoint", "{corrupt}"], "is corrupt or not a torch file"),
    ("checkpoint of another architecture", ["--model.checkpoint", "{other_arch}"],
     "does not match architecture 'resnet20'"),
    ("NaN in the weights", ["--model.checkpoint", "{nan}"], "'fc.weight' contains NaN or Inf"),
    ("finished run folder", ["--run.name", "finished"],
     "already holds a finished run; choose another run.name or set --run.overwrite true"),
    ("unfinished run folder", ["--run.name", "unfinished"],
     "already holds an unfinished run (continue it with --run.resume"),
    ("resume of a run that never started", ["--run.resume", "{empty}"],
     "holds no progress.pt: no unit of it finished, nothing to resume"),
    ("unknown export format", ["--run.export", "[tflite]"], "unknown export format 'tflite'"),
    ("unknown learning-rate schedule", ["--recon.lr_schedule", "linear"],
     "recon.lr_schedule='linear': use one of constant, cosine, cosine_act"),
    ("mixed-precision budget no allocation meets", ["--quant.mixed.bit_list", "[3,4]",
     "--quant.mixed.budget_bits", "2"], "quant.mixed.budget_bits=2 (0.0"),
    ("Trainer setting Lightning refuses", ["--trainer.devices", "0"],
     "`Trainer(devices='0')` value is not a valid input"),
]


@pytest.mark.parametrize("row", BAD_INPUTS, ids=[r[0] for r in BAD_INPUTS])
def test_bad_input_gives_one_clear_line(tmp_path, tiny_fmnist, capsys, row):
    _, args, message = row
    files = _bad_input_files(tmp_path, tiny_fmnist)
    args = [a.format(**files) for a in args]
    base = ["calibrate", "--config", str(CONFIG), "--model.weights", "null",
            "--run.out_dir", files["out"], "--run.progress", "false"]
    if "--data.init_args.root" not in args and "--data" not in args:
        base += ["--data.init_args.root", files["tiny"]]
        base += (
            [] if "--data.init_args.calib_size" in args else ["--data.init_args.calib_size", "20"]
        )
    assert cli.main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("attnround-pl calibrate: error: ")
    assert message in err


def test_a_bug_keeps_its_traceback_and_input_errors_can_show_theirs(monkeypatch, capsys):
    from attnround_pl.errors import SettingError

    def broken(args):
        raise ValueError("not an input error")

    monkeypatch.setattr(cli, "cmd_evaluate", broken)
    with pytest.raises(ValueError, match="not an input error"):
        cli.main(["evaluate", "--run", "x"])  # a bug: not swallowed into one line

    def refused(args):
        raise SettingError("recon.lr=-1 must be > 0")

    monkeypatch.setattr(cli, "cmd_evaluate", refused)
    assert cli.main(["evaluate", "--run", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "attnround-pl evaluate: error: recon.lr=-1 must be > 0"
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(SettingError):
        cli.main(["evaluate", "--run", "x"])


def test_config_typo_is_one_line(capsys):
    assert cli.main(["calibrate", "--config", str(CONFIG), "--quant.w_bitz", "3"]) == 2
    err = capsys.readouterr().err
    prefix = "attnround-pl calibrate: error: "
    assert err == prefix + "unknown option --quant.w_bitz; did you mean w_bits?\n"


def test_memory_guard_reaches_the_user_as_one_line(tmp_path, tiny_fmnist, capsys, monkeypatch):
    from attnround_pl.calib import sequencer

    monkeypatch.setattr(sequencer, "available_bytes", lambda: 1000)
    assert cli.main(["calibrate", "--config", str(CONFIG), "--model.weights", "null",
                     "--data.init_args.root", str(tiny_fmnist), "--data.init_args.calib_size",
                     "20", "--run.out_dir", str(tmp_path), "--run.progress", "false",
                     "--run.eval_float", "false", "--run.eval_nearest", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "error: unit 'conv1' needs about" in err and "--data.init_args.calib_size" in err
