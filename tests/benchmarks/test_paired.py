import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from main_config import MAIN

from attnround_pl import cli

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _paired():
    if str(BENCH) not in sys.path:  # as the scripts import it (levers.py does)
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("paired")


def test_paired_change_counts_the_images_where_two_models_differ():
    paired = _paired()
    before = torch.tensor([True, True, False, False, True])
    after = torch.tensor([True, False, True, True, True])
    change = paired.paired_change(before, after)
    assert (change.only_before, change.only_after) == (1, 2)
    assert change.change == pytest.approx(20.0)  # (2 - 1) of 5 images
    # per-image changes 0, -1, +1, +1, 0: population variance 3/5 - (1/5)^2 over n = 5
    assert change.se == pytest.approx(100 * math.sqrt((3 / 5 - 1 / 25) / 5))
    # two models right on the same images: no change and no spread
    assert paired.paired_change(before, before.clone()) == (0, 0, 0.0, 0.0)
    with pytest.raises(ValueError, match="not the same images"):
        paired.paired_change(before, after[:4])


def test_pooled_change_averages_each_image_over_the_pairs():
    paired = _paired()
    b1, a1 = torch.tensor([True, True, False, False]), torch.tensor([True, False, True, True])
    b2, a2 = torch.tensor([True, True, True, False]), torch.tensor([False, True, True, False])
    # one pair: paired_change's change and error
    one = paired.paired_change(b1, a1)
    assert paired.pooled_change([b1], [a1]) == pytest.approx((one.change, one.se))
    # per image: mean of (0, -1) = -0.5, (-1, 0) = -0.5, (+1, 0) = +0.5, (+1, 0) = +0.5
    change, se = paired.pooled_change([b1, b2], [a1, a2])
    assert change == pytest.approx(0.0)
    assert se == pytest.approx(100 * math.sqrt(0.25 / 4))


def _evaluated(paired, name, right, images="same"):
    return paired.Evaluated(name, torch.tensor(right), images)


def test_compare_pairs_in_order_and_pools_only_the_same_images():
    paired = _paired()
    befores = [_evaluated(paired, "b0", [True, False, True, True]),
               _evaluated(paired, "b1", [True, True, False, True])]
    afters = [_evaluated(paired, "a0", [True, True, True, True]),
              _evaluated(paired, "a1", [True, True, False, False])]
    result = paired.compare(befores, afters)
    assert [(p["before"], p["after"], p["change"]) for p in result.pairs] == [
        ("b0", "a0", pytest.approx(25.0)), ("b1", "a1", pytest.approx(-25.0))]
    assert result.mean_of_pairs == pytest.approx(0.0)
    assert result.pairs_sd == pytest.approx(math.sqrt(2) * 25.0)
    assert result.pairs_se == pytest.approx(25.0)  # sd / sqrt(2 pairs)
    assert result.pooled_change == pytest.approx(0.0)
    # validation splits differ by seed: each pair on its own images, nothing pooled
    other = [_evaluated(paired, "b1", [True, True, False, True], images="seed 1"),
             _evaluated(paired, "a1", [True, True, False, False], images="seed 1")]
    split = paired.compare([befores[0], other[0]], [afters[0], other[1]])
    assert split.pooled_change is None and split.pooled_se is None
    assert split.not_pooled.startswith("the pairs were evaluated on different images")
    with pytest.raises(ValueError, match="different images"):
        paired.compare([befores[0]], [other[1]])
    # seed against seed in a cycle: the mean over the pairs is 0 by construction, and a pool
    # would read 0 +- 0 however many images the seeds disagree on, so there is none
    cycle = paired.compare(befores, befores[::-1])
    assert [p["change"] for p in cycle.pairs] == [pytest.approx(0.0), pytest.approx(0.0)]
    assert [(p["only_before"], p["only_after"]) for p in cycle.pairs] == [(1, 1), (1, 1)]
    assert cycle.pooled_change is None and cycle.pooled_se is None
    assert cycle.not_pooled == "b0 is both a run before and a run after, so its images' " \
        "changes cancel in the pool"
    assert result.not_pooled is None
    with pytest.raises(ValueError, match="one for one"):
        paired.compare(befores, afters[:1])


def test_paired_reloads_two_runs_and_counts_their_test_images(tmp_path, tiny_fmnist, capsys,
                                                              monkeypatch):
    paired = _paired()
    for name, bits in (("w2", "2"), ("w4", "4")):
        args = ["calibrate", *MAIN, "--model.weights", "null",
                "--data.init_args.root", str(tiny_fmnist), "--data.init_args.calib_size", "20",
                "--recon.iters", "2", "--recon.batch_size", "4", "--run.out_dir", str(tmp_path),
                "--run.name", name, "--run.progress", "false", "--quant.w_bits", bits]
        assert cli.main(args) == 0
    capsys.readouterr()
    out = tmp_path / "paired.json"
    monkeypatch.setattr(sys, "argv", ["paired.py", "--runs", str(tmp_path), "--before", "w2",
                                      "--after", "w4", "--json", str(out)])
    paired.main()
    shown = capsys.readouterr().out
    assert "pooled image by image" in shown
    result = json.loads(out.read_text())
    (pair,) = result["pairs"]
    reports = {n: json.loads((tmp_path / n / "report.json").read_text()) for n in ("w2", "w4")}
    assert pair["top1_before"] == pytest.approx(reports["w2"]["quant_top1"])
    assert pair["top1_after"] == pytest.approx(reports["w4"]["quant_top1"])
    # the images each gets right alone account for the whole top-1 change (60 test images)
    assert pair["change"] == pytest.approx(100 * (pair["only_after"] - pair["only_before"]) / 60)
    assert pair["change"] == pytest.approx(pair["top1_after"] - pair["top1_before"])
    assert result["pooled_change"] == pytest.approx(pair["change"])
    # a run whose top-1 the rebuilt images do not reproduce is refused, not compared
    report = tmp_path / "w4" / "report.json"
    report.write_text(json.dumps({**reports["w4"], "quant_top1": reports["w4"]["quant_top1"] + 1}))
    with pytest.raises(SystemExit, match="reports top-1"):
        paired.evaluate(tmp_path / "w4")
    # a folder that is not a finished run is named
    with pytest.raises(SystemExit, match="holds no report.json"):
        paired.evaluate(tmp_path)
    config = yaml.safe_load((tmp_path / "w2" / "config.yaml").read_text())
    assert config["data"]["init_args"]["root"] == str(tiny_fmnist)
