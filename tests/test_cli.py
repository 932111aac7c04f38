import json
from pathlib import Path

import pytest
import yaml

from attnround_pl import cli

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "resnet20_w4a4.yaml"


def test_print_config_with_override(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["calibrate", "--config", str(CONFIG), "--quant.rounding", "adaround",
                  "--quant.w_bits", "3", "--print_config"])  # fmt: skip
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
            "--run.name", "cli", "--run.progress", "false", "--quant.w_bits", "3"]  # fmt: skip
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
                     "--run.out_dir", str(tmp_path)]) == 2  # fmt: skip
    assert "w_bits=9 is outside 2..8" in capsys.readouterr().err
    assert cli.main(["calibrate", "--config", str(CONFIG), "--model.arch", "vgg11",
                     "--run.out_dir", str(tmp_path)]) == 2  # fmt: skip
    assert "unknown model 'vgg11'" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", str(tmp_path / "nothing")]) == 2
    assert f"run folder {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("{}")
    assert cli.main(["export", "--run", str(tmp_path / "half"), "--format", "state"]) == 2
    assert "holds no report.json: its calibration did not finish" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
