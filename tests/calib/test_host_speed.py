"""The host speed index: measured once per process, without touching the random state, and
recorded in every report with the calibration time in reference iterations."""

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
