import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnround_pl.calib import FloatModel, ReconConfig, RunConfig, calibrate
from attnround_pl.calib.resume import PROGRESS, fingerprint, prepare_run_dir
from attnround_pl.calib.run_folder import RunFolderError
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.export import read_quantized
from attnround_pl.quant import QuantConfig

REPO = Path(__file__).resolve().parents[2]
TRAINER = {"accelerator": "cpu", "devices": 1}


def _cli(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "attnround_pl.cli",
        "calibrate",
        "--config",
        str(REPO / "configs" / "models" / "resnet20.yaml"),
        "--config",
        str(REPO / "configs" / "recipes" / "attention.yaml"),
        "--model.weights",
        "null",
        "--data.init_args.root",
        str(root),
        "--data.init_args.calib_size",
        "20",
        "--recon.iters",
        "60",
        "--recon.batch_size",
        "4",
        "--run.out_dir",
        str(out),
        "--run.name",
        name,
        "--run.progress",
        "false",
        "--run.eval_float",
        "false",
        "--run.eval_nearest",
        "false",
        "--run.host_speed",
        "false",
        "--quant.w_bits",
        "3",
        *extra,
    ]


def _same_codes(a: Path, b: Path) -> None:
    first, second = read_quantized(a)["layers"], read_quantized(b)["layers"]
    assert first.keys() == second.keys()
    for name, info in first.items():
        assert torch.equal(info["codes"], second[name]["codes"]), name
        assert info["a_step"] == second[name]["a_step"], name


def test_resume_after_sigkill_gives_the_uninterrupted_codes(tmp_path, tiny_fmnist):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(tiny_fmnist, tmp_path, "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        _cli(tiny_fmnist, tmp_path, "killed"),
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for line in proc.stdout:
        if line.startswith("unit 4/"):  # unit 4 has started learning: kill it there
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    assert proc.wait() == -signal.SIGKILL
    run = tmp_path / "killed"
    assert not (run / "report.json").exists()
    done = torch.load(run / PROGRESS, weights_only=True)["units"]
    assert 3 <= len(done) < 11  # units 1-3 were saved; the killed unit 4 was not (if on time)
    # starting it again without --run.resume is refused; nothing is lost
    again = subprocess.run(
        _cli(tiny_fmnist, tmp_path, "killed"), env=env, text=True, capture_output=True
    )
    assert again.returncode == 2
    assert "already holds an unfinished run (continue it with --run.resume" in " ".join(
        again.stderr.split()
    )
    assert torch.load(run / PROGRESS, weights_only=True)["units"] == done
    resumed = subprocess.run(
        _cli(tiny_fmnist, tmp_path, "killed", "--run.resume", str(run)),
        env=env,
        text=True,
        capture_output=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} unit(s) already done" in " ".join(resumed.stdout.split())
    _same_codes(tmp_path / "full" / "quantized.pt", run / "quantized.pt")
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert report["quant_top1"] == full["quant_top1"]
    assert [u["mse_final"] for u in report["units"]] == [u["mse_final"] for u in full["units"]]
    assert report["resumed_after_units"] == len(done)
    assert not (run / PROGRESS).exists()


def _calibrate(root, out, name, quant, **run):
    data = FashionMNISTDataModule(root=str(root), calib_size=20, batch_size=30)
    run = RunConfig(out_dir=str(out), name=name, progress=False, eval_float=False, **run)
    torch.manual_seed(0)  # the random float weights (the CLI's seed_everything does this)
    return calibrate(
        FloatModel("resnet20", weights=None),
        data,
        quant,
        ReconConfig(iters=8, batch_size=4),
        run,
        TRAINER,
    )


def test_two_runs_with_the_same_seed_are_identical(tmp_path, tiny_fmnist):
    quant = QuantConfig(w_bits=3, a_bits=3, act_border="aquant", seed=7)
    first = _calibrate(tiny_fmnist, tmp_path, "a", quant).to_dict()
    second = _calibrate(tiny_fmnist, tmp_path, "b", quant).to_dict()
    _same_codes(tmp_path / "a" / "quantized.pt", tmp_path / "b" / "quantized.pt")
    wall = {"calib_seconds", "calib_reference_iters", "host_speed", "peak_rss_mb", "run_dir",
            "units", "wall_seconds"}  # wall times, and what is derived from them
    assert {k: v for k, v in first.items() if k not in wall} == {
        k: v for k, v in second.items() if k not in wall
    }
    for a, b in zip(first["units"], second["units"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    other = _calibrate(
        tiny_fmnist, tmp_path, "c", QuantConfig(w_bits=3, a_bits=3, act_border="aquant", seed=8)
    ).to_dict()
    learned = [u.get("mse_learned", u["mse_final"]) for u in (other["units"][1], first["units"][1])]
    assert learned[0] != learned[1]  # (what a unit kept may be round-to-nearest in both)


def test_resume_refuses_other_settings_and_overwrite_replaces(tmp_path, tiny_fmnist):
    run = tmp_path / "r"
    run.mkdir()
    with pytest.raises(RunFolderError, match="no progress.pt: no unit of it finished"):
        prepare_run_dir(run, resume=True, overwrite=False)
    torch.save(
        {"format": "attnround-pl/progress/1", "fingerprint": "x", "units": []}, run / PROGRESS
    )
    with pytest.raises(RunFolderError, match="started with other settings"):
        _calibrate(tiny_fmnist, tmp_path, "ignored", QuantConfig(), resume=str(run))
    (run / "report.json").write_text("{}")
    with pytest.raises(RunFolderError, match="holds a finished run: nothing to resume"):
        prepare_run_dir(run, resume=True, overwrite=False)
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        prepare_run_dir(run, resume=False, overwrite=False)
    prepare_run_dir(run, resume=False, overwrite=True)
    assert run.is_dir() and list(run.iterdir()) == []


def test_fingerprint_sees_weights_images_and_settings():
    net = torch.nn.Linear(3, 2)
    batches = [torch.ones(2, 3)]
    base = fingerprint({"a": 1}, net, batches)
    assert fingerprint({"a": 1}, net, batches) == base
    assert fingerprint({"a": 2}, net, batches) != base
    assert fingerprint({"a": 1}, net, [torch.zeros(2, 3)]) != base
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert fingerprint({"a": 1}, net, batches) != base


def test_resume_a_users_model_with_graph_units(tmp_path, monkeypatch):
    """A model passed as an object, its units from the traced graph: stopped after two units
    and resumed, it ends with the uninterrupted run's codes."""
    from user_cnn import UserCNN

    import attnround_pl.calib.pipeline as pipeline

    images = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    recon = ReconConfig(iters=3, batch_size=4)

    def run(name, **extra):
        torch.manual_seed(0)
        config = RunConfig(out_dir=str(tmp_path), name=name, progress=False, **extra)
        return calibrate(UserCNN().eval(), images, QuantConfig(w_bits=3), recon, config)

    full = run("full")
    saved = pipeline.save_progress

    class CrashError(RuntimeError):
        pass

    def stop_after_two(run_dir, qmodel, results, *args):
        saved(run_dir, qmodel, results, *args)
        if len(results) == 2:
            raise CrashError

    monkeypatch.setattr(pipeline, "save_progress", stop_after_two)
    with pytest.raises(CrashError):
        run("stopped")
    monkeypatch.setattr(pipeline, "save_progress", saved)
    torch.manual_seed(0)
    resumed = calibrate(
        UserCNN().eval(),
        images,
        QuantConfig(w_bits=3),
        recon,
        RunConfig(resume=str(tmp_path / "stopped"), progress=False),
    )
    assert resumed.resumed_after_units == 2
    assert [u.rule for u in resumed.units] == [u.rule for u in full.units]
    assert "graph" in {u.rule for u in full.units}
    assert [u.mse_final for u in resumed.units] == [u.mse_final for u in full.units]
    _same_codes(tmp_path / "full" / "quantized.pt", tmp_path / "stopped" / "quantized.pt")
