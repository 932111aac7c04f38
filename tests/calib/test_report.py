"""The run report: typed, written to and read from report.json in one place, in the layout
earlier versions wrote (flat keys), so old run folders still read."""

import json

import pytest

from attnround_pl.calib.host_speed import HostSpeed
from attnround_pl.calib.report import (
    OnnxCheck,
    Report,
    ReportError,
    Scores,
    StateCheck,
    UnitFidelity,
    UnitResult,
    WallSeconds,
)
from attnround_pl.mixed.report import MixedLayer, MixedReport
from attnround_pl.quant.fidelity import Fidelity

FID = Fidelity(sqnr_db=21.5, cosine=0.99, max_abs_diff=0.25, samples=64)


def _unit(name: str, **changes) -> UnitResult:
    fields = {"name": name, "kind": "block", "rule": "registry", "layers": [f"{name}.conv"],
              "cache_mb": 1.5, "cache_device": "cpu", "mse_nearest": 2e-5, "learned": True,
              "mse_final": 1e-5, "kept": "learned", "seconds": 3.25, "iters": 2000}
    return UnitResult(**{**fields, **changes})


def _full_report() -> Report:
    return Report(
        model="resnet20", rounding="attention", w_bits=4, a_bits=4, calib_size=1024,
        model_source={"kind": "zoo", "name": "resnet20"}, tau=0.5, eval_data="test split",
        quant={"w_bits": 4}, recon={"iters": 2000}, machine="x86_64, 2 CPU cores",
        cpu="Intel(R) Xeon(R) Processor, AVX512",
        host_speed=HostSpeed(ms_per_iter=20.0, iters=10, threads=2, measured_at="start"),
        size_mb=0.14,
        mixed=MixedReport(bit_list=[3, 4], eps2=1e-3, budget_mb=None, budget_bits=None,
                          cluster_bits=[3, 4], size_mb=0.14, single_precision_size_mb={"3": 0.1},
                          layers=[MixedLayer("conv1", 432, None, 8, True)]),
        float_ops={"add": 9}, never_run_layers=[], unit_rules={"registry": 11},
        float_model=Scores(top1=92.9, top5=99.8),
        nearest=Scores(top1=88.0, top5=99.0, fidelity={"output": FID}),
        quantized=Scores(top1=92.4, top5=99.7, fidelity={"output": FID}),
        units=[_unit("layer1.0"), _unit("conv1", kept="nearest", mse_learned=3e-5)],
        calib_seconds=67.2, calib_reference_iters=3360, unit_fidelity_data="test split",
        unit_fidelity=[UnitFidelity("layer1.0", FID)], peak_rss_mb=812.5,
        run_dir="runs/x",
        onnx=OnnxCheck(path="runs/x/quantized.onnx", top1=92.4, argmax_mismatch=0,
                       torch_top1=92.4, max_abs_logit_diff=1e-5, images=10000,
                       code_divergence=None, onnxruntime="1.23", seconds=9.4),
        state=StateCheck(path="runs/x/quantized_state.safetensors", max_abs_diff=0.0, images=10000),
        wall_seconds=WallSeconds(setup=1.6, host_speed=2.25, baselines=10.5, calibration=67.2,
                                 evaluation=12.0, write=0.3),
    )


def test_report_json_round_trips_in_the_flat_layout(tmp_path):
    report = _full_report()
    path = report.write(tmp_path / "report.json")
    written = json.loads(path.read_text())
    # the keys earlier versions wrote and the benchmarks read
    assert written["quant_top1"] == 92.4 and written["float_top5"] == 99.8
    assert written["nearest_fidelity"]["output"]["sqnr_db"] == 21.5
    assert "float_fidelity" not in written  # the float model has no reference
    assert written["onnx_argmax_mismatch"] == 0 and written["onnx_path"].endswith(".onnx")
    assert written["state_max_abs_diff"] == 0.0 and written["state_images"] == 10000
    assert written["host_speed"]["ms_per_iter"] == 20.0
    assert written["cpu"] == "Intel(R) Xeon(R) Processor, AVX512"
    assert written["mixed"]["layers"][0]["coding_length"] is None
    assert "mse_learned" not in written["units"][0] and written["units"][1]["mse_learned"] == 3e-5
    assert written["unit_fidelity"] == [{"name": "layer1.0", **FID.to_dict()}]
    assert "devices" not in written and written["tau"] == 0.5
    assert written["wall_seconds"]["baselines"] == 10.5 and written["onnx_seconds"] == 9.4
    assert written["state_seconds"] is None  # a check written without its time
    assert Report.read(path) == report


def test_an_old_report_reads_with_what_it_has(tmp_path):
    # as an early version wrote it: no model_source, eval_data, host_speed, tau or export keys
    old = {"model": "resnet20", "rounding": "nearest", "w_bits": 4, "a_bits": 4,
           "calib_size": 1024, "quant": {"tau": 0.5}, "recon": {"iters": 0},
           "machine": "x86_64", "quant_top1": 80.0,
           "units": [{"name": "conv1", "kind": "layer", "rule": "layer", "layers": ["conv1"],
                      "cache_mb": 0.1, "cache_device": "cpu", "mse_nearest": 1e-6,
                      "learned": False, "mse_final": 1e-6, "kept": "as built",
                      "seconds": 0.5, "iters": 0, "a_key_from_the_future": 1}],
           "onnx_path": "q.onnx", "onnx_top1": 80.0, "onnx_argmax_mismatch": 2,
           "onnx_torch_top1": 80.1, "onnx_max_abs_logit_diff": 0.1, "onnx_images": 100}
    (tmp_path / "report.json").write_text(json.dumps(old))
    report = Report.read(tmp_path / "report.json")
    assert report.quantized == Scores(top1=80.0)
    assert report.float_model is None and report.nearest is None and report.state is None
    assert report.units[0].kept == "as built" and report.host_speed is None
    assert report.cpu == ""  # written before reports named the CPU
    assert report.onnx.argmax_mismatch == 2 and report.onnx.code_divergence is None
    assert report.wall_seconds is None and report.wall_time_line() is None
    assert report.to_dict()["quant_top1"] == 80.0


@pytest.mark.parametrize("text, why", [
    ("{", "Expecting"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"model": "m"}', "missing"),
])
def test_an_unreadable_report_is_refused_in_one_line(tmp_path, text, why):
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(ReportError, match=why) as err:
        Report.read(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable run report") and "\n" not in message


def test_an_export_check_replaces_the_earlier_one_of_its_format():
    report = _full_report()
    newer = StateCheck(path="s2.pt", max_abs_diff=1e-7, images=5)
    report.add_check(newer)
    assert report.state is newer and report.onnx.path == "runs/x/quantized.onnx"


def test_the_wall_time_line_sums_the_phases_and_the_exports():
    report = _full_report()
    # 1.6 + 2.25 + 10.5 + 67.2 + 12.0 + 0.3 + 9.4 (ONNX) = 103.25; the state check has no time
    # and a phase that rounds to 0 s is left out of the list, not out of the sum
    assert report.wall_time_line() == (
        "wall time 103 s: setup 2, host speed 2, baselines 10, calibration 67, evaluation 12, "
        "onnx export and check 9"
    )
