"""The host speed index: measured once per process, without touching the random state,
re-sampled through a run, and recorded in every report with the calibration time in reference
iterations."""

import json

import pytest
import torch

import attnround_pl
from attnround_pl.calib import host_speed as host_speed_module
from attnround_pl.calib.host_speed import (
    BLOCK_ITERS,
    BLOCKS,
    HostSpeed,
    ReferenceClock,
    host_speed,
    sample_ms,
)
from attnround_pl.calib.report import Report


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


def test_a_re_sample_times_the_same_workload_briefly():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ms = sample_ms()
    assert torch.equal(torch.rand(3), expected)
    # the same workload as the start's measurement: within a few times of it on any host
    assert host_speed().ms_per_iter / 5 < ms < host_speed().ms_per_iter * 5


def test_the_clock_converts_each_segment_at_the_mean_of_its_two_ends():
    start = HostSpeed(ms_per_iter=20.0, iters=100, threads=2, measured_at="now")
    samples = iter([40.0, 10.0])
    clock = ReferenceClock(start, min_segment_s=10.0, sample=lambda: next(samples))
    assert clock.lap(5.0) == 0.0 and clock.samples == []  # too soon: no sample
    clock.lap(12.0)  # 0-12 s between 20 and 40 ms: 12 s / 30 ms
    assert clock.reference_iters(12.0) == pytest.approx(400.0)
    assert clock.lap(15.0) == 0.0  # 3 s after the last sample
    clock.lap(30.0)  # 12-30 s between 40 and 10 ms: 18 s / 25 ms
    assert clock.reference_iters(30.0) == pytest.approx(1120.0)
    assert clock.reference_iters(36.0) == pytest.approx(1720.0)  # the rest at the last, 10 ms
    speed = clock.speed()
    assert speed.samples == ((12.0, 40.0), (30.0, 10.0)) and speed.ms_per_iter == 20.0
    assert HostSpeed(**json.loads(json.dumps(speed.to_dict()))) == speed


def test_without_samples_the_clock_is_the_start_index():
    start = HostSpeed(ms_per_iter=20.0, iters=100, threads=2, measured_at="now")
    clock = ReferenceClock(start, min_segment_s=10.0, sample=lambda: pytest.fail("sampled"))
    clock.lap(9.0)
    assert clock.reference_iters(9.5) == start.reference_iters(9.5)
    assert clock.speed() == start and "samples" not in start.to_dict()  # the earlier layout


def test_a_run_re_samples_after_its_units_and_converts_with_the_samples(monkeypatch):
    calls = []

    def fake_sample() -> float:
        calls.append(1)
        return 10.0 * len(calls)

    monkeypatch.setattr(host_speed_module, "MIN_SEGMENT_S", 0.0)
    monkeypatch.setattr(host_speed_module, "sample_ms", fake_sample)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
    report = attnround_pl.quantize(model.eval(), torch.randn(16, 3, 8, 8), iters=3,
                                   progress=False, trainer={"accelerator": "cpu"}).report
    samples = report.host_speed.samples
    assert len(samples) == len(report.units) == len(calls) >= 2  # one after each unit
    assert [ms for _, ms in samples] == [10.0 * (i + 1) for i in range(len(samples))]
    seconds = [t for t, _ in samples]
    assert seconds == sorted(seconds) and seconds[-1] <= report.calib_seconds
    expected, last = 0.0, (0.0, host_speed().ms_per_iter)
    for second, ms in samples:
        expected += (second - last[0]) * 1000 / ((last[1] + ms) / 2)
        last = (second, ms)
    expected += (report.calib_seconds - last[0]) * 1000 / last[1]
    assert report.calib_reference_iters == pytest.approx(expected, abs=2)
    assert Report.from_dict(report.to_dict()).host_speed == report.host_speed


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
