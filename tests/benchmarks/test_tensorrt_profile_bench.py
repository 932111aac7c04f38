"""benchmarks/tensorrt_profile.py: its rows parse as the command line's own settings, and the
summary pairs the profiles by seed."""


import pytest
from benchmark_scripts import BENCH, load_benchmark

from attnround_pl import cli
from attnround_pl.calib.report import OnnxCheck, Report, Scores
from attnround_pl.export.tensorrt_check import Finding, TensorRTCheck
from attnround_pl.quant import QuantConfig


def _bench():
    return load_benchmark("tensorrt_profile")


def test_each_profile_s_arguments_give_w8a8_on_its_grid(monkeypatch):
    bench = _bench()
    monkeypatch.chdir(BENCH.parent)  # the rows name the config files from the repository root
    parser = cli.build_cli(["--config", "configs/models/resnet20.yaml"]).parser
    for profile in bench.PROFILES:
        cfg = parser.parse_args(bench.calibrate_args("resnet20", "nearest", profile, 2))
        quant = QuantConfig(**cfg["quant"].as_dict()).validate()
        grid = "default" if profile == "default" else "tensorrt"
        assert (quant.w_bits, quant.a_bits, quant.profile) == (8, 8, grid)
        assert quant.rounding == "nearest" and cfg["seed_everything"] == 2
        assert quant.w_symmetric is (grid == "tensorrt")
        assert quant.act_placement == ("blocks" if profile == "tensorrt_blocks" else "layers")
        assert cfg["recon"]["block_output_steps"] is False  # nothing learns with nearest
    # a reconstruction at the block placement learns in the peers' order
    cfg = parser.parse_args(bench.calibrate_args("resnet20", "attention", "tensorrt_blocks", 0))
    assert cfg["quant"]["act_placement"] == "blocks" and cfg["recon"]["block_output_steps"]
    cfg = parser.parse_args(bench.calibrate_args("resnet20", "attention", "tensorrt", 0))
    assert cfg["recon"]["block_output_steps"] is False


def _row(bench, profile: str, seed: int, top1: float, violations: int):
    report = Report("resnet20", "nearest", 8, 8, 1024, float_model=Scores(top1=92.7),
                    quantized=Scores(top1=top1))
    onnx = OnnxCheck(path="q.onnx", top1=top1, argmax_mismatch=seed, torch_top1=top1,
                     max_abs_logit_diff=0.05, images=10000, opset=18)
    found = tuple(Finding("zero_point_type", "x") for _ in range(violations))
    trt = TensorRTCheck(violations=found, warnings=(Finding("residual_input", "w"),), opset=18,
                        weighted_ops=22, quantized_ops=22)
    return bench.row("resnet20", "nearest", profile, seed, report, onnx, trt)


def test_summary_pairs_seeds_and_the_table_has_one_line_per_model_and_recipe():
    bench = _bench()
    rows = [_row(bench, "default", 0, 92.0, 86), _row(bench, "tensorrt", 0, 92.5, 0),
            _row(bench, "default", 1, 91.0, 86), _row(bench, "tensorrt", 1, 91.0, 0)]
    (entry,) = bench.summary(rows)
    assert entry["seeds"] == [0, 1] and entry["float_top1"] == 92.7
    assert entry["difference"][0] == 0.25  # (0.5 + 0.0) / 2
    assert entry["default"]["violations"] == [86, 86] and entry["tensorrt"]["warnings"] == 1
    assert entry["tensorrt"]["argmax_mismatch"] == 1
    table = bench.markdown([entry]).splitlines()
    assert len(table) == 3 and table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert table[2].startswith("| resnet20 | nearest | 2 | 92.70 | 91.50 ± 0.71 | 91.75 ± 1.06 "
                               "| +0.25 ± 0.35 | 86; 0 | 1 |")


def test_the_block_placement_is_compared_with_the_profile_and_old_rows_are_kept():
    bench = _bench()
    rows = [_row(bench, "default", 0, 92.0, 86), _row(bench, "tensorrt", 0, 92.5, 0),
            _row(bench, "default", 1, 91.0, 86), _row(bench, "tensorrt", 1, 91.0, 0)]
    blocks = [_row(bench, "tensorrt_blocks", s, top1, 0) for s, top1 in ((0, 92.1), (1, 91.4))]
    (entry,) = bench.summary(rows + blocks[:1])  # seed 1 missing: no blocks columns
    assert "difference_blocks" not in entry and "tensorrt_blocks" not in entry
    assert bench.markdown([entry]).splitlines()[2].endswith("| - | - | - |")
    (entry,) = bench.summary(bench.merged(rows + blocks[:1], blocks))
    assert entry["difference_blocks"][0] == pytest.approx(0.0)  # (-0.4 + 0.4) / 2
    assert entry["tensorrt_blocks"]["top1_by_seed"] == [92.1, 91.4]
    line = bench.markdown([entry]).splitlines()[2]
    assert line.endswith("| 91.75 ± 0.49 | +0.00 ± 0.57 | 0; 1 |")
    # a redone row replaces its old one; the others stay in order
    redone = _row(bench, "tensorrt", 1, 90.0, 0)
    out = bench.merged(rows, [redone])
    assert len(out) == 4 and out[-1] is redone and out[:3] == [rows[0], rows[1], rows[2]]
