"""The host speed index: measured once per process, without touching the random state, and
recorded in every report with the calibration time in reference iterations."""

import json

import torch

import attnround_pl
from attnround_pl.calib.host_speed import BLOCK_ITERS, BLOCKS, HostSpeed, host_speed


def test_measured_once_per_process_and_leaves_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = host_speed()
    assert torch.equal(torch.rand(3), expected)  # the workload's own seed stays inside it
    assert host_speed() is first
    assert first.ms_per_iter > 0 and first.iters == BLOCKS * BLOCK_ITERS
    assert first.threads == torch.get_num_threads() and "ResNet-20" in first.workload


def test_reference_iterations_divide_by_the_index():
    speed = HostSpeed(ms_per_iter=20.0, iters=25, threads=2, measured_at="now")
    assert speed.reference_iters(3.0) == 150.0
    assert speed.to_dict()["ms_per_iter"] == 20.0


def test_every_report_records_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    report = attnround_pl.quantize(model, torch.randn(16, 3, 8, 8), iters=5, progress=False,
                                   trainer={"accelerator": "cpu"}).report
    assert report.host_speed == host_speed()
    expected = report.calib_seconds * 1000 / report.host_speed.ms_per_iter
    assert report.calib_reference_iters == round(expected)
    assert report.to_dict()["host_speed"] == host_speed().to_dict()


def test_a_run_without_it_leaves_it_out(tmp_path, tiny_fmnist):
    from attnround_pl.calib import FloatModel, ReconConfig, RunConfig, calibrate
    from attnround_pl.data import FashionMNISTDataModule
    from attnround_pl.quant import QuantConfig

    data = FashionMNISTDataModule(root=str(tiny_fmnist), calib_size=8, batch_size=30)
    run = RunConfig(out_dir=str(tmp_path), name="r", progress=False, eval_float=False,
                    eval_nearest=False, host_speed=False)
    report = calibrate(FloatModel("resnet20", weights=None), data,
                       QuantConfig(rounding="nearest", act_border="nearest"),
                       ReconConfig(iters=1, batch_size=4), run, {"accelerator": "cpu"})
    assert report.host_speed is None and report.calib_reference_iters is None
    assert report.calib_seconds > 0
    written = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "host_speed" not in written and "calib_reference_iters" not in written
    assert written["calib_seconds"] == report.calib_seconds
