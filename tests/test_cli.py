import json
from pathlib import Path

import pytest
import yaml
from main_config import CONFIGS, MAIN, PAPER

from attnround_pl import cli


def _print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as stop:
        cli.main(["calibrate", *args, "--print_config"])
    assert stop.value.code == 0, args
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_with_override(capsys):
    cfg = _print_config(capsys, *MAIN, "--quant.rounding", "adaround", "--quant.w_bits", "3")
    assert cfg["quant"]["rounding"] == "adaround" and cfg["quant"]["w_bits"] == 3
    assert cfg["quant"]["rounding_args"] is None  # AdaRound's defaults
    assert cfg["quant"]["a_bits"] == 4 and cfg["recon"]["iters"] == 2000
    assert cfg["model"]["arch"] == "resnet20"


def test_every_model_recipe_and_precision_file_composes(capsys):
    """Every model file with the default recipe, every recipe and precision file on the main
    model: later files override earlier ones."""
    models = sorted((CONFIGS / "models").glob("*.yaml"))
    recipes = sorted((CONFIGS / "recipes").glob("*.yaml"))
    precisions = sorted((CONFIGS / "precision").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"attention", "adaround", "brecq", "qdrop", "nearest"}
    assert {p.stem for p in models} >= {"resnet20", "mobilenetv2", "resnet18", "resnet50",
                                         "mobilenet_v2", "mnasnet1_0", "regnet_x_600mf"}
    for path in models:
        cfg = _print_config(capsys, "--config", str(path), "--config", str(recipes[0]))
        assert cfg["model"]["arch"] == path.stem
    for path in recipes:
        cfg = _print_config(capsys, *MAIN, "--config", str(path))
        assert cfg["quant"]["rounding"] == yaml.safe_load(path.read_text())["quant"]["rounding"]
    for path in precisions:
        cfg = _print_config(capsys, *MAIN, "--config", str(path))
        given = yaml.safe_load(path.read_text())
        assert cfg["quant"]["w_bits"] == given["quant"]["w_bits"]
        assert cfg["mixed"]["bit_list"] == given.get("mixed", {}).get("bit_list")
    # a later recipe replaces an earlier one's settings completely
    cfg = _print_config(capsys, *MAIN, "--config", str(CONFIGS / "recipes" / "qdrop.yaml"),
                        "--config", str(CONFIGS / "recipes" / "attention.yaml"))
    assert cfg["quant"]["rounding_args"] is None and cfg["quant"]["drop"]["prob"] == 0.0
    assert cfg["recon"]["keep_better"] is True and cfg["recon"]["iters"] == 2000


def test_the_rounding_settings_from_the_command_line_and_yaml(capsys, tmp_path):
    for args in (["--quant.rounding_args.tau", "0.25"], ["--quant.rounding_args", "{tau: 0.25}"],
                 ["--quant.rounding_args={tau: 0.25}"]):
        cfg = _print_config(capsys, *MAIN, *args)
        assert cfg["quant"]["rounding_args"] == {"tau": 0.25}, args
    (tmp_path / "tau.yaml").write_text("quant:\n  rounding_args:\n    tau: 0.75\n")
    cfg = _print_config(capsys, *MAIN, "--config", str(tmp_path / "tau.yaml"))
    assert cfg["quant"]["rounding_args"] == {"tau": 0.75}
    cfg = _print_config(capsys, *MAIN, "--config", str(CONFIGS / "recipes" / "brecq.yaml"),
                        "--quant.rounding_args.warmup", "0.3", "--quant.drop.prob", "0.5",
                        "--mixed.bit_list", "[3,4]")
    assert cfg["quant"]["rounding_args"] == {"reg_weight": 0.01, "beta_start": 20.0,
                                             "beta_end": 2.0, "warmup": 0.3}
    assert cfg["quant"]["drop"] == {"prob": 0.5, "float_inputs": False}
    assert cfg["mixed"]["bit_list"] == [3, 4]


def test_calibrate_then_evaluate(tmp_path, tiny_fmnist, capsys):
    args = ["calibrate", *MAIN, "--model.weights", "null",
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
    # a run folder of an earlier version: its config.yaml has the flat keys
    (tmp_path / "cli" / "config.yaml").write_text(yaml.safe_dump(old_keys(saved)))
    assert cli.main(["evaluate", "--run", str(tmp_path / "cli")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["quant_top1"] == out["quant_top1"]
    assert cli.main(["export", "--run", str(tmp_path / "cli"), "--format", "onnx"]) == 0
    shown = capsys.readouterr().out
    assert "onnxruntime top-1" in shown and "differing argmax" in shown
    exported = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert exported["onnx_argmax_mismatch"] == 0
    assert exported["onnx_top1"] == pytest.approx(report["quant_top1"])
    # W3A3: opset 21 by default, the codes in 4-bit types; opset 18 keeps 8-bit ones
    assert exported["onnx_opset"] == 21 and "opset 21" in shown
    run = ["export", "--run", str(tmp_path / "cli"), "--format", "onnx"]
    assert cli.main([*run, "--opset", "18", "--out", str(tmp_path / "q18.onnx")]) == 0
    capsys.readouterr()
    old = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert old["onnx_opset"] == 18 and old["onnx_path"].endswith("q18.onnx")
    assert old["onnx_weight_code_bytes"] > 1.9 * exported["onnx_weight_code_bytes"]
    assert old["onnx_top1"] == exported["onnx_top1"]
    state = ["export", "--run", str(tmp_path / "cli"), "--format", "state"]
    for bad, why in (([*run, "--opset", "13"], "run.onnx_opset=13: the ONNX export writes"),
                     ([*state, "--opset", "18"], "--opset is an ONNX setting")):
        assert cli.main(bad) == 2
        assert why in capsys.readouterr().err
    assert cli.main([*run]) == 0  # back to the default export
    capsys.readouterr()
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli.main(["export", "--run", str(tmp_path / "cli"), "--format", "tflite"]) == 2
    assert "unknown export format 'tflite'" in capsys.readouterr().err
    # a second calibrate into the same folder is refused, the finished run is kept
    assert cli.main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert json.loads((tmp_path / "cli" / "report.json").read_text()) == report


def old_keys(config: dict) -> dict:
    """A config in the keys of the version before rounding_args (quant.tau, adaround_*,
    drop_prob, quant.mixed)."""
    quant = {k: v for k, v in config["quant"].items() if k not in ("rounding_args", "drop")}
    quant |= {"tau": 0.5, "adaround_reg_weight": 0.01, "adaround_beta_start": 20.0,
              "adaround_beta_end": 2.0, "adaround_warmup": 0.2, "drop_prob": 0.0,
              "mixed": config["mixed"]}
    return {k: v for k, v in config.items() if k != "mixed"} | {"quant": quant}


def test_a_config_of_an_earlier_version_reads_in_this_versions_keys():
    config = {"seed_everything": 0, "quant": {"w_bits": 3, "rounding": "adaround", "tau": 0.5,
                                              "adaround_warmup": 0.3, "drop_prob": 0.5,
                                              "mixed": {"bit_list": [3, 4], "eps2": 0.01}}}
    now = cli.current_config(config)
    assert now["quant"]["rounding_args"] == {"reg_weight": 0.01, "beta_start": 20.0,
                                             "beta_end": 2.0, "warmup": 0.3}
    assert now["quant"]["drop"] == {"prob": 0.5, "float_inputs": False}
    assert now["quant"]["w_bits"] == 3
    assert "tau" not in now["quant"] and "mixed" not in now["quant"]
    assert now["mixed"] == {"bit_list": [3, 4], "eps2": 0.01}
    current = {"quant": {"w_bits": 3, "rounding_args": None}}
    assert cli.current_config(current) is current  # nothing to move: as it is


def test_clear_errors(tmp_path, capsys):
    assert cli.main(["calibrate", *MAIN, "--quant.w_bits", "9",
                     "--run.out_dir", str(tmp_path)]) == 2
    assert "w_bits=9 is outside 2..8" in capsys.readouterr().err
    assert cli.main(["calibrate", *MAIN, "--model.arch", "vgg99",
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


# (row of docs/reliability.md's bad-input table, arguments, what the one-line error says)
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
    ("mixed-precision budget no allocation meets", ["--mixed.bit_list", "[3,4]",
     "--mixed.budget_bits", "2"], "mixed.budget_bits=2 (0.0"),
    ("Trainer setting Lightning refuses", ["--trainer.devices", "0"],
     "`Trainer(devices='0')` value is not a valid input"),
]


@pytest.mark.parametrize("row", BAD_INPUTS, ids=[r[0] for r in BAD_INPUTS])
def test_bad_input_gives_one_clear_line(tmp_path, tiny_fmnist, capsys, row):
    _, args, message = row
    files = _bad_input_files(tmp_path, tiny_fmnist)
    args = [a.format(**files) for a in args]
    base = ["calibrate", *MAIN, "--model.weights", "null",
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
    assert cli.main(["calibrate", *MAIN, "--quant.w_bitz", "3"]) == 2
    err = capsys.readouterr().err
    prefix = "attnround-pl calibrate: error: "
    assert err == prefix + "unknown option --quant.w_bitz; did you mean w_bits?\n"


def test_memory_guard_reaches_the_user_as_one_line(tmp_path, tiny_fmnist, capsys, monkeypatch):
    from attnround_pl.calib import sequencer

    monkeypatch.setattr(sequencer, "available_bytes", lambda: 1000)
    assert cli.main(["calibrate", *MAIN, "--model.weights", "null",
                     "--data.init_args.root", str(tiny_fmnist), "--data.init_args.calib_size",
                     "20", "--run.out_dir", str(tmp_path), "--run.progress", "false",
                     "--run.eval_float", "false", "--run.eval_nearest", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "error: unit 'conv1..layer1.1' needs about" in err
    assert "--data.init_args.calib_size" in err


def test_the_paper_recipe_composes_the_settings_of_the_single_file_it_replaced(capsys):
    """models/resnet20.yaml + recipes/attention.yaml: every setting as the old main job's
    configs/resnet20_w4a4.yaml gave it (its --print_config, kept in tests/support); the quant
    keys renamed, mixed out of quant, nothing else changed."""
    before = yaml.safe_load((Path(__file__).parent / "support" /
                             "resnet20_w4a4_print_config_before.yaml").read_text())
    now = _print_config(capsys, *PAPER)
    for section in ("seed_everything", "model"):
        assert now[section] == before[section], section
    # keys added since, at their defaults
    assert now["recon"] == {**before["recon"], "keep_best_every": 0, "act_stage_iters": 0,
                            "act_stage_loss_p": 2.0, "act_stage_float_inputs": False,
                            "loss": "mse", "block_output_steps": False,
                            "unit_blocks": 1, "unit_blocks_in_stage": False,
                            "join_end_layers": False, "plateau_gain": 0.0,
                            "output_weight": 0.0, "output_temperature": 4.0}
    assert now["data"] == {**before["data"], "init_args": {**before["data"]["init_args"],
                                                           "holdout": 0}}
    assert now["run"] == {**before["run"], "onnx_opset": None, "host_speed": True}
    assert {k: now["trainer"].get(k) for k in before["trainer"]} == before["trainer"]
    old = dict(before["quant"])
    assert now["mixed"] == {**old.pop("mixed"), "method": "coding_length"}  # method: new
    assert old.pop("tau") == 0.5 and old.pop("drop_prob") == 0.0
    assert [old.pop(k) for k in ("adaround_reg_weight", "adaround_beta_start",
                                 "adaround_beta_end", "adaround_warmup")] == [0.01, 20.0, 2.0, 0.2]
    quant = dict(now["quant"])
    assert quant.pop("rounding_args") is None
    assert quant.pop("drop") == {"prob": 0.0, "float_inputs": False}
    # keys added since, at their defaults
    assert quant.pop("act_placement") == "layers" and quant.pop("profile") == "default"
    assert quant.pop("scale_search_p") == 2.0
    assert quant == old
    from attnround_pl.quant import QuantConfig

    assert QuantConfig(**now["quant"]).validate().rounding_settings().tau == 0.5
    # the main job's default recipe is that with Lp range searches, p = 2.4, alpha's learning
    # rate 1e-3, two blocks a unit and the ends joined: the defaults
    main = _print_config(capsys, *MAIN)
    assert main["quant"] == {**now["quant"], "scale_search_p": 2.4, "act_border": "aquant"}
    assert main["recon"] == {**now["recon"], "lr": 0.001, "unit_blocks": 2,
                             "join_end_layers": True}
    assert {k: main[k] for k in ("mixed", "model")} == {k: now[k] for k in ("mixed", "model")}
    assert QuantConfig().scale_search_p == 2.4
    # AQuant's border (since 2026-12-04) where the rounding learns; none with a fixed rounding
    # or the tensorrt profile, none on a file saved before the key
    assert QuantConfig().validate().act_border == "aquant"
    assert QuantConfig(rounding="adaround").validate().act_border == "aquant"
    assert QuantConfig(rounding="nearest").validate().act_border == "nearest"
    assert QuantConfig(w_bits=8, a_bits=8, profile="tensorrt").validate().act_border == "nearest"
    assert QuantConfig.from_dict({"w_bits": 3}).act_border == "nearest"
    from attnround_pl.calib.settings import ReconConfig

    assert (ReconConfig().lr, ReconConfig().act_lr) == (1e-3, 4e-4)
    assert (ReconConfig().unit_blocks, ReconConfig().join_end_layers) == (2, True)
