"""Faults around a calibration (issue 30): each is driven through the command line and gives
one line on stderr, exit status 2 (130/143 for Ctrl-C/SIGTERM), and loses nothing finished."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from attnround_pl import cli
from attnround_pl.calib import resume as resume_module
from attnround_pl.calib import sequencer as sequencer_module
from attnround_pl.calib.interrupt import CalibrationInterrupted
from attnround_pl.calib.resume import PROGRESS
from attnround_pl.calib.run_lock import LOCK, process_start

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["--config", str(REPO / "configs" / "models" / "resnet20.yaml"),
           "--config", str(REPO / "configs" / "recipes" / "attention.yaml")]


def calibrate_args(data_root, out_dir, name="r", *extra):
    return ["calibrate", *CONFIGS, "--model.weights", "null",
            "--data.init_args.root", str(data_root), "--data.init_args.calib_size", "20",
            "--recon.iters", "2", "--recon.batch_size", "4", "--run.out_dir", str(out_dir),
            "--run.name", name, "--run.progress", "false", "--run.eval_float", "false",
            "--run.eval_nearest", "false", "--run.host_speed", "false", *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def no_partial_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*.part")]


def test_read_only_output_folder_is_one_line_before_any_work(tiny_fmnist, capsys):
    target = Path("/sys/attnround-pl-runs")  # sysfs: nobody, not even root, creates folders
    try:
        target.mkdir()
    except OSError:
        pass
    else:
        target.rmdir()
        pytest.skip("/sys is writable here")
    assert cli.main(calibrate_args(tiny_fmnist, target)) == 2
    line = one_error_line(capsys)
    assert line.startswith("attnround-pl calibrate: error: cannot write the run folder "
                           f"{target / 'r'}: ")
    assert "--run.out_dir" in line
    assert not target.exists()


def test_disk_full_on_the_first_progress_file(tmp_path, tiny_fmnist, capsys):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / (PROGRESS + ".part")).symlink_to("/dev/full")  # its writes fail with ENOSPC
    assert cli.main(calibrate_args(tiny_fmnist, tmp_path / "runs")) == 2
    line = one_error_line(capsys)
    assert f"no space left on the device to write {run / PROGRESS} (" in line
    assert "MB free" in line and "no unit was saved yet" in line
    assert not (run / PROGRESS).exists() and not (run / LOCK).exists()
    no_partial_files(run)


def test_disk_full_later_keeps_the_finished_units_for_resume(tmp_path, tiny_fmnist, capsys,
                                                             monkeypatch):
    real = resume_module.save_tensors
    calls = {"n": 0}

    def second_write_hits_a_full_disk(payload, path):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(str(path) + ".part").symlink_to("/dev/full")
        return real(payload, path)

    monkeypatch.setattr(resume_module, "save_tensors", second_write_hits_a_full_disk)
    args = calibrate_args(tiny_fmnist, tmp_path)
    assert cli.main(args) == 2
    run = tmp_path / "r"
    line = one_error_line(capsys)
    assert f"no space left on the device to write {run / PROGRESS}" in line
    kept = f"unit 1 is kept in {run / PROGRESS}: free space and continue with --run.resume {run}"
    assert kept in line
    assert torch.load(run / PROGRESS, weights_only=True)["units"] == ["conv1"]
    no_partial_files(run)
    monkeypatch.setattr(resume_module, "save_tensors", real)
    assert cli.main([*args, "--run.resume", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["resumed_after_units"] == 1 and len(report["units"]) == 11


def test_a_busy_run_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, tiny_fmnist,
                                                                  capsys):
    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen(["sleep", "60"])  # stands for a calibration holding the folder
    try:
        owner = {"pid": holder.pid, "start": process_start(holder.pid),
                 "host": os.uname().nodename, "since": "2026-12-01 10:00:00"}
        (run / LOCK).write_text(json.dumps(owner))
        assert cli.main(calibrate_args(tiny_fmnist, tmp_path)) == 2
        line = one_error_line(capsys)
        assert line == (f"attnround-pl calibrate: error: {run} is in use by another "
                        f"calibration (pid {holder.pid}, since 2026-12-01 10:00:00); wait for "
                        "it to finish or choose another run.name")
        assert sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing written into it
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, the next run takes the folder over
    assert cli.main(calibrate_args(tiny_fmnist, tmp_path)) == 0
    assert (run / "report.json").is_file() and not (run / LOCK).exists()


def test_a_lock_from_another_host_names_the_file_to_delete(tmp_path, tiny_fmnist, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    assert cli.main(calibrate_args(tiny_fmnist, tmp_path)) == 2
    assert f"(pid 1 on elsewhere, since then); if no run is active there, delete {run / LOCK}" \
        in one_error_line(capsys)


def test_batch_size_above_the_images_is_capped_and_said(tmp_path, tiny_fmnist, capsys):
    args = calibrate_args(tiny_fmnist, tmp_path)
    args[args.index("--recon.batch_size") + 1] = "100000"
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "recon.batch_size=100000 is more than the 20 calibration images: each step takes 20" \
        in " ".join(out.split())
    assert json.loads((tmp_path / "r" / "report.json").read_text())["recon"]["batch_size"] == 20
    unit_lines = [line for line in out.splitlines() if line.startswith("unit ")]
    assert len(unit_lines) == 11 and all(len(line) <= 79 for line in unit_lines)  # one each


def test_memory_guard_refuses_before_any_work(tmp_path, tiny_fmnist, capsys, monkeypatch):
    monkeypatch.setattr(sequencer_module, "available_bytes", lambda: 2**20)
    args = calibrate_args(tiny_fmnist, tmp_path)
    args[args.index("--run.eval_float") + 1] = "true"
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "unit '" in err[0] and "for a training step" in err[0]
    assert "--recon.batch_size" in err[0]
    assert "float" not in captured.out  # nothing was evaluated
    assert not (tmp_path / "r" / PROGRESS).exists() and not (tmp_path / "r" / LOCK).exists()


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "attnround_pl.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_signal_in_a_units_teardown_still_stops_cleanly(tmp_path, tiny_fmnist, capsys,
                                                          monkeypatch):
    """CI once sent SIGTERM while Lightning closed a unit's TensorBoard writer: Lightning then
    finalized the logger again, that raised "Writer is closed", and the run ended with that
    traceback and status 1. The interruption is found under the new exception."""
    finalize = TensorBoardLogger.finalize
    calls = {"success": 0}

    def finalize_hit_by_a_signal(self, status):
        if status == "failed":
            raise OSError("Writer is closed")
        calls["success"] += 1
        if calls["success"] == 3:
            raise CalibrationInterrupted(signal.SIGTERM)
        return finalize(self, status)

    monkeypatch.setattr(TensorBoardLogger, "finalize", finalize_hit_by_a_signal)
    args = calibrate_args(tiny_fmnist, tmp_path)
    assert cli.main(args) == 143
    done = torch.load(tmp_path / "r" / PROGRESS, weights_only=True)["units"]
    assert 2 <= len(done) <= 3  # the interrupted teardown's unit may have been saved
    assert one_error_line(capsys) == (f"attnround-pl calibrate: stopped after unit {len(done)} "
                                      f"of 11; "
                                      f"continue with --run.resume {tmp_path / 'r'}")
    monkeypatch.setattr(TensorBoardLogger, "finalize", finalize)
    assert cli.main([*args, "--run.resume", str(tmp_path / "r")]) == 0
    assert len(json.loads((tmp_path / "r" / "report.json").read_text())["units"]) == 11


# SIGINT takes the same path as SIGTERM (one handler): it runs with -m slow
@pytest.mark.parametrize("signum, status", [
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_a_unit_and_says_how_to_resume(tmp_path, tiny_fmnist, capsys,
                                                             signum, status):
    args = calibrate_args(tiny_fmnist, tmp_path)
    args[args.index("--recon.iters") + 1] = "500"  # units long enough to be stopped in
    proc = _start(args, tmp_path)
    run = tmp_path / "r"

    def wait_for(path: Path) -> None:
        deadline = time.monotonic() + 300
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.exists(), proc.communicate()

    wait_for(run / LOCK)
    if signum == signal.SIGINT:  # meanwhile a second run into the same folder is refused
        assert cli.main(args) == 2
        assert f"{run} is in use by another calibration (pid {proc.pid}," in (
            capsys.readouterr().err
        )
    progress = run / PROGRESS
    wait_for(progress)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    lines = err.strip().splitlines()
    done = torch.load(progress, weights_only=True)["units"]
    assert 1 <= len(done) < 11
    assert lines == [f"attnround-pl calibrate: stopped after unit {len(done)} of 11; continue "
                     f"with --run.resume {tmp_path / 'r'}"]
    assert not (tmp_path / "r" / LOCK).exists()
    no_partial_files(tmp_path / "r")
    assert cli.main([*args, "--run.resume", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["resumed_after_units"] == len(done) and len(report["units"]) == 11
