import json

import pytest
import torch
from benchmark_scripts import load_benchmark

from attnround_pl.quant import act_border


def _load():
    return load_benchmark("border_shrink")


def _border_args(bound: float) -> tuple[torch.Tensor, ...]:
    """An activation and a border's (k, c) with ``|k| reach + |c|`` = ``bound`` on channel 0."""
    x = torch.randn(2, 3, 4, 4)
    k = torch.tensor([bound / 2, 0.01, -0.02])
    c = torch.tensor([bound / 2, 0.0, 0.03])
    return x, k, c, 1.0


def test_the_count_takes_reconstruction_steps_only_and_tells_at_work_from_idle():
    bench = _load()
    count = bench.ShrinkCount(window=4)
    original = act_border._shrink_is_idle
    with count.counting():
        act_border._effective_parts(*_border_args(0.9))  # outside a step: not counted
        count._unit = "unit_a"  # what the patched reconstruction_step sets
        count.steps["unit_a"] = 4
        assert act_border._effective_parts(*_border_args(0.9))[2] is not None  # at work
        assert act_border._effective_parts(*_border_args(0.1))[2] is None  # idle
        count.steps["unit_a"] = 5  # past the window: counted in the totals only
        act_border._effective_parts(*_border_args(0.9))
    assert act_border._shrink_is_idle is original  # put back
    assert count.calls == {"unit_a": 3} and count.at_work == {"unit_a": 2}
    assert count.window_calls == {"unit_a": 2} and count.window_at_work == {"unit_a": 1}
    assert count.shares() == {"unit_a": pytest.approx(2 / 3)}
    assert count.first_at_work == {"unit_a": 4}


def test_the_forced_shrink_computes_its_parts_and_keeps_the_values():
    bench = _load()
    x, k, c, reach = _border_args(0.1)
    k_idle, c_idle, parts = act_border._effective_parts(x, k, c, reach)
    assert parts is None
    with bench.shrink_forced():
        k_forced, c_forced, parts = act_border._effective_parts(x, k, c, reach)
    assert parts is not None and torch.equal(parts.shrink, torch.ones(3))
    assert torch.equal(k_forced, k_idle) and torch.equal(c_forced, c_idle)
    assert act_border._effective_parts(x, k, c, reach)[2] is None  # not forced after


def test_the_upper_bound_weights_each_units_shrink_cost_by_its_at_work_share():
    bench = _load()
    rows = [{"unit": "a", "step_ms": 6.0, "shrink_ms": 0.5},
            {"unit": "b", "step_ms": 4.0, "shrink_ms": 1.0},
            {"unit": "c", "step_ms": 10.0, "shrink_ms": -0.2}]  # noise: counted as 0
    bound = bench.upper_bound(rows, {"a": 0.5, "b": 0.1, "c": 1.0})
    assert bound["saved_ms"] == pytest.approx(0.25 + 0.1)
    assert bound["percent_of_step"] == pytest.approx(100 * 0.35 / 20.0)
    assert bench.upper_bound(rows, {})["saved_ms"] == 0.0


def test_border_shrink_counts_a_short_calibration_times_a_unit_and_writes_json(tmp_path,
                                                                               capsys):
    bench = _load()
    bench.main(["--model", "resnet20", "--settings", "W2A2", "--iters", "3", "--images",
                "random", "--max-units", "1", "--rounds", "1", "--steps", "2", "--out",
                str(tmp_path)])
    result = json.loads((tmp_path / "border_shrink_resnet20.json").read_text())
    counted = result["counted"]["W2A2"]
    assert set(counted["steps"].values()) == {3}  # every unit learned its 3 steps
    assert counted["steps"].keys() == counted["calls"].keys()
    for unit, calls in counted["calls"].items():  # several border quantizers a step
        assert calls >= 2 * counted["steps"][unit]
        assert 0 <= counted["at_work"][unit] <= calls
    assert 0 < counted["top1"] <= 100
    (row,) = result["units"]
    assert row["unit"] == "conv1..layer1.1" and row["unit"] in counted["calls"]  # one name
    assert row["shrink_ms"] == pytest.approx(row["forced_ms"] - row["step_ms"])
    assert all(row[k] > 0 for k in ("step_ms", "forced_ms", "float_ms"))
    assert result["upper_bound"]["W2A2"]["percent_of_step"] >= 0
    assert "quantizer-steps" in capsys.readouterr().out
