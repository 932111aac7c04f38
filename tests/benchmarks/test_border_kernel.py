import json
import os
import shutil

import pytest
import torch
from benchmark_scripts import load_benchmark

from attnround_pl.quant.act_border import AQuantBorder

needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                              reason="no C compiler on PATH")


def _load():
    return load_benchmark("border_kernel")


@needs_cc
def test_the_compiled_border_keeps_the_eager_values_and_sums_its_gradients_apart(tmp_path):
    bench = _load()
    kernels = bench.build_kernels(tmp_path)
    # a conv's activation, a Linear's, an odd inner length (a row's tail after 16 lanes)
    rows = bench.check_values(kernels, [(4, 3, 5, 7), (6, 5), (2, 4, 37)])
    for row in rows:
        assert row["output_bits_equal"] and row["input_grad_bits_equal"], row
        # float rounding: the step's gradient is a difference of two sums, so it may lose
        # a few digits more than k's and c's (up to 5e-5 on MobileNetV2's shapes)
        assert row["step_grad_rel"] < 1e-4, row
        assert row["k_grad_rel"] < 1e-5 and row["c_grad_rel"] < 1e-5, row


@needs_cc
def test_the_compiled_border_applies_only_within_its_block(tmp_path):
    bench = _load()
    kernels = bench.build_kernels(tmp_path)
    eager = AQuantBorder.quantize
    border = AQuantBorder(3, reach=4.0)
    x, step = torch.randn(2, 3, 4, 4, requires_grad=True), torch.tensor(0.3, requires_grad=True)
    with pytest.raises(RuntimeError, match="inside"):
        with bench.compiled_border(kernels):
            out = border.quantize(x, step, 0, 3, 0.1)
            assert out.grad_fn.name() == "CompiledBorderRoundBackward"
            raise RuntimeError("inside")
    assert AQuantBorder.quantize is eager
    assert border.quantize(x, step, 0, 3, 0.1).grad_fn.name() == "_BorderRoundBackward"


@needs_cc
def test_border_kernel_times_each_unit_three_ways_and_writes_them(tmp_path, capsys):
    bench = _load()
    bench.main(["--model", "resnet20", "--images", "random", "--rounds", "1", "--steps", "2",
                "--max-units", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "border_kernel_resnet20.json").read_text())
    assert [u["unit"] for u in result["units"]] == ["conv1..layer1.1", "layer1.2..layer2.0"]
    for unit in result["units"]:
        assert unit["eager_ms"] > 0 and unit["compiled_ms"] > 0 and unit["float_ms"] > 0
    total = result["total"]
    assert total["eager_ms"] == pytest.approx(sum(u["eager_ms"] for u in result["units"]))
    assert total["ratio_compiled"] == pytest.approx(total["compiled_ms"] / total["float_ms"])
    # every border shape of the model is timed, with how often a step meets it
    shapes = {tuple(r["shape"]): r["calls_a_step"] for r in result["border"]}
    assert shapes[(64, 1, 28, 28)] == 1 and shapes[(64, 64)] == 1
    assert sum(shapes.values()) == 22  # ResNet-20's 21 convolutions and its fc
    assert all(r["output_bits_equal"] and r["input_grad_bits_equal"] for r in result["values"])
    assert "| all units |" in capsys.readouterr().out
