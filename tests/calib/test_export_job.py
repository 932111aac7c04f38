import json
from dataclasses import replace

import pytest
import torch
import yaml

from attnround_pl.calib import FloatModel, ReconConfig, RunConfig, calibrate
from attnround_pl.calib.export_job import check_format, export_run, export_table
from attnround_pl.calib.report import OnnxCheck, Report, Scores
from attnround_pl.calib.run_folder import RunFolderError, check_run_folder
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.export import CheckpointError, read_onnx_metadata, read_state, save_quantized
from attnround_pl.models import build_model
from attnround_pl.quant import (
    QuantConfig,
    calibrate_activations,
    freeze_model,
    quantize_model,
)


def _finished_run(run_dir, data, **settings):
    """A run folder as calibrate leaves it: nearest rounding, no reconstruction."""
    torch.manual_seed(0)
    quant = QuantConfig(rounding="nearest", **settings)
    qmodel = quantize_model(build_model("resnet20", weights=None), quant)
    data.prepare_data()
    data.setup("test")
    calibrate_activations(qmodel, [x for x, _ in data.calib_dataloader()])
    freeze_model(qmodel)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"quant": quant.to_dict()}))
    Report("resnet20", "nearest", 4, 4, 20, quantized=Scores(top1=1.0)).write(
        run_dir / "report.json")
    save_quantized(qmodel, run_dir / "quantized.pt", quant, {"arch": "resnet20", "num_classes": 10})
    return run_dir


def test_export_run_writes_both_formats_and_adds_them_to_the_report(tmp_path, tiny_fmnist):
    data = FashionMNISTDataModule(root=str(tiny_fmnist), calib_size=20, batch_size=30)
    run_dir = _finished_run(tmp_path / "run", data)
    onnx_result = export_run(run_dir, "onnx", data)
    assert onnx_result.images == 60 and onnx_result.argmax_mismatch == 0
    assert onnx_result.top1 == onnx_result.torch_top1
    div = onnx_result.code_divergence
    assert div is None or div["float_noise"]
    state_result = export_run(run_dir, "state", data, out=tmp_path / "elsewhere" / "s.pt")
    assert state_result.max_abs_diff == 0.0 and state_result.images == 60
    assert onnx_result.seconds > 0 and state_result.seconds > 0  # each export's own time
    assert f"export and check in {state_result.seconds:.0f} s" in export_table(state_result).title
    assert (tmp_path / "elsewhere" / "s.pt").is_file()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["quant_top1"] == 1.0  # earlier keys kept
    assert report["onnx_top1"] == onnx_result.top1 and "state_max_abs_diff" in report
    assert Report.read(run_dir / "report.json").onnx == onnx_result
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml", "quantized.onnx", "quantized.pt", "report.json"]
    # a checkpoint without recorded preprocessing: what is known, the example's input shape
    assert read_onnx_metadata(run_dir / "quantized.onnx") == {
        "input_shape": [1, 28, 28], "num_classes": 10, "input_name": "input"}
    state_meta = read_state(tmp_path / "elsewhere" / "s.pt")["meta"]
    assert state_meta["preprocessing"] == {"input_shape": [1, 28, 28]}
    assert state_meta["num_classes"] == 10


def test_a_tensorrt_profile_run_is_checked_against_tensorrt_rules_on_export(
        tmp_path, tiny_fmnist):
    data = FashionMNISTDataModule(root=str(tiny_fmnist), calib_size=20, batch_size=30)
    run_dir = _finished_run(tmp_path / "trt", data, w_bits=8, a_bits=8, profile="tensorrt")
    result = export_run(run_dir, "onnx", data)
    assert result.tensorrt_violations == {} and result.argmax_mismatch == 0
    assert result.tensorrt_warnings == {"residual_input": 9}  # ResNet-20's float shortcuts
    assert Report.read(run_dir / "report.json").onnx.tensorrt_warnings == {"residual_input": 9}
    table = export_table(result)
    assert table.columns[-1].header == "TensorRT rules"
    assert list(table.columns[-1].cells) == ["passed (9 warnings)"]
    failing = replace(result, tensorrt_violations={"zero_point_type": 64})
    assert list(export_table(failing).columns[-1].cells) == ["zero_point_type x64 (9 warnings)"]
    default = export_run(_finished_run(tmp_path / "default", data), "onnx", data)
    assert default.tensorrt_violations is None  # not asked for: not checked


def test_export_table_says_why_the_logits_differ():
    result = OnnxCheck(path="m.onnx", top1=90.0, argmax_mismatch=0, torch_top1=90.0,
                       max_abs_logit_diff=0.2, images=10, code_divergence=None,
                       onnxruntime="1")
    div = {"layer": "layer2.3.conv2", "index": 7, "quantizers": 20, "differing": 1,
           "elements": 12288, "max_tie_distance": 9.5e-7, "float_noise": True}
    caption = export_table(replace(result, code_divergence=div)).caption
    assert "input of 'layer2.3.conv2' (quantizer 8 of 20), 1 of 12288" in caption
    assert "9.5e-07 step of a rounding tie: float noise" in caption
    fault = export_table(
        replace(result, code_divergence={**div, "max_tie_distance": 0.31, "float_noise": False})
    ).caption
    assert "up to 0.31 step from a rounding tie" in fault and "export fault" in fault
    no_div = export_table(result).caption
    assert "summation order only" in no_div
    # equal logits, or a report written before the diagnosis existed: no caption
    assert export_table(replace(result, max_abs_logit_diff=0.0)).caption is None
    # a check written before its time was recorded says nothing about it
    assert export_table(result).title == "m.onnx on 10 images"
    assert export_table(replace(result, seconds=12.4)).title.endswith(
        "on 10 images, export and check in 12 s")


def test_unfinished_or_missing_run_folders_are_refused(tmp_path, tiny_fmnist):
    with pytest.raises(RunFolderError, match="does not exist"):
        check_run_folder(tmp_path / "nope")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(RunFolderError, match="no config.yaml: not a calibration run folder"):
        check_run_folder(run_dir)
    (run_dir / "config.yaml").write_text("{}")
    with pytest.raises(RunFolderError, match="no report.json: its calibration did not finish"):
        check_run_folder(run_dir)
    (run_dir / "report.json").write_text("{}")
    with pytest.raises(RunFolderError, match="no quantized.pt"):
        check_run_folder(run_dir)
    (run_dir / "quantized.pt").write_bytes(b"not a checkpoint")
    assert check_run_folder(run_dir) == run_dir
    data = FashionMNISTDataModule(root=str(tiny_fmnist))
    with pytest.raises(CheckpointError, match="quantized checkpoint .*quantized.pt is corrupt"):
        export_run(run_dir, "onnx", data)
    assert not (run_dir / "quantized.onnx").exists()


def test_unknown_format_fails_before_any_calibration(tmp_path, tiny_fmnist):
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid: onnx, state"):
        check_format("tflite")
    data = FashionMNISTDataModule(root=str(tiny_fmnist), calib_size=20, batch_size=30)
    run = RunConfig(out_dir=str(tmp_path / "runs"), name="r", export=["tflite"])
    with pytest.raises(ValueError, match="unknown export format"):
        calibrate(FloatModel("resnet20", weights=None), data, QuantConfig(), ReconConfig(), run)
    assert not (tmp_path / "runs").exists()
