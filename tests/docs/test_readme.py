"""README's Python quickstart runs exactly as printed, and its headline table is exactly what
``benchmarks/plots.py --headline`` prints from the benchmark JSON."""

import json
import re
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark
from doc_blocks import python_block

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HEADLINE = re.compile(r"<!-- headline[^\n]*-->\n(.*?)<!-- /headline -->", re.S)


def quickstart() -> str:
    return python_block(README, "python-quickstart")


def test_python_quickstart_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(quickstart(), "README.md", "exec"), namespace)
    qmodel = namespace["qmodel"]
    assert (tmp_path / "resnet18_w4a4.pt").is_file()
    fidelity = qmodel.report.quantized.fidelity["output"]
    assert fidelity.samples == 64 and fidelity.sqnr_db < float("inf")
    assert "sqnr_db=" in capsys.readouterr().out
    assert all(u.iters == 100 for u in qmodel.report.units if u.learned)


def load_plots():
    return load_benchmark("plots")


def readme_headline() -> str:
    blocks = HEADLINE.findall(README.read_text())
    assert len(blocks) == 1, "README needs exactly one <!-- headline --> block"
    return blocks[0]


def test_readme_headline_is_what_plots_prints_from_the_json():
    expected = load_plots().headline_table()
    assert readme_headline() == expected, (
        "README's headline table differs from the JSON: paste the output of "
        "`.venv/bin/python benchmarks/plots.py --headline` between its headline marks")


def _row(model, setting, method, seeds, top1, seconds=150.0):
    return {"model": model, "setting": setting, "method": method, "seeds": list(seeds),
            "top1": top1, "top1_std": 0.123, "float_top1": 92.0, "calib_seconds": seconds,
            "machine": "test host", "top5": 99.0, "drop": 92.0 - top1, "peak_rss_mb": 1000.0,
            "size_mb": 0.1, "onnx_top1": top1, "onnx_argmax_mismatch": 0}


def test_headline_shows_a_dash_where_no_row_has_three_seeds(tmp_path, monkeypatch):
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    rows = [_row("resnet20", "W4A4", "attention", (0, 1, 2), 91.5, 143.0),
            _row("resnet20", "W4A4", "nearest", (0, 1, 2), 90.0, 2.0),
            _row("resnet20", "W3A3", "attention", (0,), 91.0),  # one seed: not shown
            _row("resnet20", "W4A32", "attention", (0, 1, 2), 92.0)]  # not a headline setting
    (tmp_path / "accuracy_main.json").write_text(json.dumps({"command": "cmd main",
                                                             "rows": rows}))
    # the same cell with three seeds in another suite: the model's own suite is read first
    other = [_row("resnet20", "W4A4", "attention", (0, 1, 2), 11.0)]
    (tmp_path / "accuracy_a.json").write_text(json.dumps({"command": "cmd a", "rows": other}))
    text = plots.headline_table()
    lines = text.splitlines()
    assert lines[0] == "| model (float top-1 %) | recipe | W4A4 | W3A3 | W2A4 | W2A2 |"
    assert ("| ResNet-20 (92.00) | Attention Round, paper | 91.50 ± 0.12 (2.4 min) | - | - | - |"
            in lines)
    nearest = "| ResNet-20 (92.00) | round-to-nearest | 90.00 ± 0.12 (< 0.1 min) | - | - | - |"
    assert nearest in lines
    # a recipe without a row at any setting gets no row of dashes; the line below names it
    assert not any(line.startswith("| MobileNetV2 (") for line in lines)
    assert "at any of its settings yet: " in text and "AdaRound on MobileNetV2" in text
    assert "Attention Round, paper on ResNet-20" not in text
    assert "round-to-nearest on ResNet-20" not in text
    assert "`benchmarks/results/accuracy_main.json`" in text and "`cmd main`" in text
    assert "accuracy_a.json" not in text and "11.00" not in text
    assert "test host" in text and "91.00" not in text
    assert "resnet20 W3A3 attention" in text  # the dashes are named, never filled in
    assert text == plots.headline_table()  # the same JSON, the same block


def test_headline_reads_the_recipes_suite_before_the_models_tables(tmp_path, monkeypatch):
    """The recipes suite (default recipe and paper's setting, one sitting) wins a cell that
    a model's own table also holds; the default recipe has its own row."""
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    main = [_row("resnet20", "W2A2", "attention", (0, 1, 2), 90.45)]
    recipes = [_row("resnet20", "W2A2", "attention", (0, 1, 2), 90.61, 60.0),
               _row("resnet20", "W2A2", "attnround", (0, 1, 2), 91.23, 66.0)]
    (tmp_path / "accuracy_main.json").write_text(json.dumps({"command": "m", "rows": main}))
    (tmp_path / "accuracy_recipes.json").write_text(json.dumps({"command": "r",
                                                                "rows": recipes}))
    lines = plots.headline_table().splitlines()
    assert "| ResNet-20 (92.00) | Attention Round, paper | - | - | - | 90.61 ± 0.12 (1.0 min) |" \
        in lines
    assert "| ResNet-20 (92.00) | attnround (default) | - | - | - | 91.23 ± 0.12 (1.1 min) |" \
        in lines
    assert not any("90.45" in line for line in lines)


def test_headline_leaves_out_the_like_for_like_suite(tmp_path, monkeypatch):
    """A peer recipe's row with 3 seeds in the like-for-like suite (the peers' placement) is
    not a headline cell: the headline's rows use our placement."""
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    _write(tmp_path / "accuracy_recipes.json",
           [_row("resnet20", "W2A2", "attnround", (0, 1, 2), 91.23, 66.0)])
    _write(tmp_path / "accuracy_like_for_like.json",
           [_row("resnet20", "W2A2", "qdrop", (0, 1, 2), 90.63, 1208.0)])
    lines = plots.headline_table().splitlines()
    assert "| ResNet-20 (92.00) | attnround (default) | - | - | - | 91.23 ± 0.12 (1.1 min) |" \
        in lines
    assert not any(line.startswith("| ResNet-20 (92.00) | QDrop") for line in lines)
    text = "\n".join(lines)
    assert "90.63" not in text and "accuracy_like_for_like" not in text


def _timed(model, setting, method, seconds, cpu="CPU A", top1=(90.0,)):
    """A timing run's row: one run per top-1 given (seeds 0, 1, ...), each with its seconds
    and CPU under per_seed."""
    row = _row(model, setting, method, range(len(top1)), sum(top1) / len(top1), seconds)
    row["per_seed"] = {str(i): {"calib_seconds": seconds, "cpu": cpu, "quant_top1": t}
                       for i, t in enumerate(top1)}
    return row


def _write(path, rows):
    path.write_text(json.dumps({"command": "c", "rows": rows}))


def test_the_goal_table_takes_the_time_bound_from_one_host_where_a_timing_run_has_it(
        tmp_path, monkeypatch):
    """A pair of seed-0 runs from one sitting (accuracy_<suite>_<date>_timing.json, the same
    date and CPU) gives the ratio that decides the time bound; a pair from two CPUs or dates,
    or of another peer than the best row, does not count; a later date replaces an earlier."""
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    rows = [_row("resnet20", s, m, (0, 1, 2), 92.0, seconds)
            for s in ("W4A4", "W3A3", "W2A4", "W2A2")
            for m, seconds in (("attnround", 100.0), ("brecq_v1", 300.0))]
    _write(tmp_path / "accuracy_recipes.json", rows)
    peers = [_timed("resnet20", "W4A4", "brecq_v1", 900.0),  # one host: 9.0x
             _timed("resnet20", "W3A3", "brecq_v1", 300.0),  # one host: 2.5x, not enough
             _timed("resnet20", "W2A4", "brecq_v1", 900.0, cpu="CPU B"),  # another CPU
             _timed("resnet20", "W2A2", "qdrop_v1", 900.0)]  # not the best peer row
    ours = [_timed("resnet20", s, "attnround", seconds)
            for s, seconds in (("W4A4", 100.0), ("W3A3", 120.0), ("W2A4", 100.0),
                               ("W2A2", 100.0))]
    _write(tmp_path / "accuracy_main_2026-01-02_timing.json", peers)
    _write(tmp_path / "accuracy_recipes_2026-01-02_timing.json", ours)
    lines = plots.goal_table().splitlines()
    row = "| ResNet-20 {} | 92.00 ± 0.12 (1.7 min) | BRECQ's recipe, v1: 92.00 ± 0.12 (5.0 min) "
    assert row.format("W4A4") + "| +0.00 | 3x | 9.0x (seed 0, 2026-01-02) | reached |" in lines
    assert (row.format("W3A3") + "| +0.00 | 3x | 2.5x (seed 0, 2026-01-02) "
            "| **only 2.5x faster** |") in lines
    for setting in ("W2A4", "W2A2"):
        assert row.format(setting) + "| +0.00 | 3x | - | **only 3.0x faster** |" in lines
    # a later date's run of the pair replaces the earlier one; one of a date alone is no pair
    _write(tmp_path / "accuracy_main_2026-02-01_timing.json",
           [_timed("resnet20", "W3A3", m, s) for m, s in (("brecq_v1", 600.0),
                                                          ("attnround", 100.0))]
           + [_timed("resnet20", "W4A4", "brecq_v1", 900.0)])
    lines = plots.goal_table().splitlines()
    assert row.format("W3A3") + "| +0.00 | 3x | 6.0x (seed 0, 2026-02-01) | reached |" in lines
    assert row.format("W4A4") + "| +0.00 | 3x | - | **only 3.0x faster** |" in lines
    # a timing row without its runs' CPU stops with the file's name
    broken = _timed("resnet20", "W3A3", "attnround", 100.0)
    del broken["per_seed"]["0"]["cpu"]
    _write(tmp_path / "accuracy_main_2026-02-01_timing.json", [broken])
    with pytest.raises(SystemExit, match="accuracy_main_2026-02-01_timing.json: row resnet20"):
        plots.goal_table()


def test_the_goal_table_takes_the_top1_from_one_host_where_a_timing_run_has_three_seeds(
        tmp_path, monkeypatch):
    """With 3 seeds each in one sitting the gap on one host (within its larger spread)
    decides, and the verdict says where the rows across hosts say otherwise; fewer seeds
    leave the rows' gap deciding."""
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    rows = [_row("mobilenetv2", "W2A4", "attnround", (0, 1, 2), 90.00, 60.0),  # 0.123 spreads
            _row("mobilenetv2", "W2A4", "qdrop_v1", (0, 1, 2), 90.20, 600.0),  # behind 0.20
            _row("mobilenetv2", "W4A4", "attnround", (0, 1, 2), 91.00, 60.0),
            _row("mobilenetv2", "W4A4", "qdrop_v1", (0, 1, 2), 91.00, 600.0),  # level
            _row("mobilenetv2", "W3A3", "attnround", (0, 1, 2), 90.00, 60.0),
            _row("mobilenetv2", "W3A3", "qdrop_v1", (0, 1, 2), 90.50, 600.0)]  # behind 0.50
    _write(tmp_path / "accuracy_recipes.json", rows)
    timing = [_timed("mobilenetv2", "W2A4", "qdrop_v1", 1200.0, top1=(90.6, 90.5, 90.4)),
              _timed("mobilenetv2", "W2A4", "attnround", 100.0, top1=(90.6, 90.4, 90.35)),
              _timed("mobilenetv2", "W4A4", "qdrop_v1", 1200.0, top1=(91.0, 91.1, 91.2)),
              _timed("mobilenetv2", "W4A4", "attnround", 100.0, top1=(90.6, 90.7, 90.8)),
              _timed("mobilenetv2", "W3A3", "qdrop_v1", 1200.0, top1=(90.0, 90.0)),
              _timed("mobilenetv2", "W3A3", "attnround", 100.0, top1=(90.0, 90.0))]
    _write(tmp_path / "accuracy_mobilenetv2_2026-01-02_timing.json", timing)
    lines = plots.goal_table().splitlines()
    assert ("| MobileNetV2 W2A4 | 90.00 ± 0.12 (1.0 min) | QDrop's recipe, v1: 90.20 ± 0.12 "
            "(10.0 min) | -0.20 | 10x | -0.05 pp, 12.0x (seeds 0-2, 2026-01-02) "
            "| reached on one host (across hosts: behind by 0.20 pp) |") in lines
    assert ("| MobileNetV2 W4A4 | 91.00 ± 0.12 (1.0 min) | QDrop's recipe, v1: 91.00 ± 0.12 "
            "(10.0 min) | +0.00 | 10x | -0.40 pp, 12.0x (seeds 0-2, 2026-01-02) "
            "| **behind by 0.40 pp** on one host (across hosts: level) |") in lines
    assert ("| MobileNetV2 W3A3 | 90.00 ± 0.12 (1.0 min) | QDrop's recipe, v1: 90.50 ± 0.12 "
            "(10.0 min) | -0.50 | 10x | 12.0x (seeds 0-1, 2026-01-02) "
            "| **behind by 0.50 pp** |") in lines


def test_the_goal_in_the_peers_placement_judges_the_best_peer_with_three_seeds(
        tmp_path, monkeypatch):
    """The like-for-like suite's goal: the default in the peers' placement against the best of
    the peers' recipes with 3 seeds, seed by seed; the time ratio over the seeds whose two runs
    name one CPU (across CPUs where none do); peer rows with fewer seeds listed, not judged."""
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    ours, three = "attnround_blocks", (90.0, 90.0, 90.0)
    rows = [_timed("resnet20", "W4A4", ours, 100.0, top1=(92.0, 92.2, 92.1)),
            _timed("resnet20", "W4A4", "qdrop", 1200.0, top1=(92.1, 92.1, 92.1)),
            _timed("resnet20", "W4A4", "brecq", 800.0, top1=(92.9,)),  # one seed: listed
            _timed("resnet20", "W2A2", ours, 100.0, top1=three),
            _timed("resnet20", "W2A2", "qdrop", 300.0, top1=(90.5, 90.5, 90.5)),
            _timed("resnet20", "W2A2", "brecq", 1200.0, top1=(90.2, 90.2, 90.2)),
            _timed("mobilenetv2", "W2A2", ours, 100.0, top1=three),
            _timed("mobilenetv2", "W2A2", "qdrop", 1500.0, top1=three),
            _timed("mobilenetv2", "W4A4", ours, 100.0, top1=three),
            _timed("mobilenetv2", "W4A4", "qdrop", 700.0, cpu="CPU B", top1=three),
            _timed("mobilenetv2", "W3A3", ours, 100.0, top1=three),
            _timed("mobilenetv2", "W3A3", "qdrop", 900.0, top1=(89.0,)),
            _timed("resnet20", "W3A3", ours, 100.0, top1=three)]
    rows[7]["per_seed"]["0"].update(cpu="CPU B", calib_seconds=3000.0)  # seed 0 elsewhere
    apart = _timed("mobilenetv2", "W2A4", "qdrop", 900.0, top1=three)  # seeds 3-5: no pair
    apart["per_seed"] = {str(int(s) + 3): run for s, run in apart["per_seed"].items()}
    rows += [_timed("mobilenetv2", "W2A4", ours, 100.0, top1=three), apart]
    _write(tmp_path / "accuracy_like_for_like.json", rows)
    lines = plots.like_for_like_goal_table().splitlines()
    assert ("| ResNet-20 W4A4 | 92.10 ± 0.12 (1.7 min) | QDrop's recipe: 92.10 ± 0.12 (20.0 min) "
            "| +0.00 (-0.10, +0.10, +0.00) | 12.0x | BRECQ's recipe: 92.90 (seed 0) "
            "| reached |") in lines
    assert ("| ResNet-20 W2A2 | 90.00 ± 0.12 (1.7 min) | QDrop's recipe: 90.50 ± 0.12 (5.0 min) "
            "| -0.50 (-0.50, -0.50, -0.50) | 3.0x | - "
            "| **behind by 0.50 pp; only 3.0x faster** |") in lines
    assert ("| MobileNetV2 W2A2 | 90.00 ± 0.12 (1.7 min) | QDrop's recipe: 90.00 ± 0.12 "
            "(25.0 min) | +0.00 (+0.00, +0.00, +0.00) | 15.0x (seeds 1, 2) | - | reached |"
            ) in lines
    assert ("| MobileNetV2 W4A4 | 90.00 ± 0.12 (1.7 min) | QDrop's recipe: 90.00 ± 0.12 "
            "(11.7 min) | +0.00 (+0.00, +0.00, +0.00) | 7.0x (across CPUs) | - | reached |"
            ) in lines
    assert ("| MobileNetV2 W3A3 | - | - | - | - | QDrop's recipe: 89.00 (seed 0) | - |"
            in lines)
    assert "| ResNet-20 W3A3 | - | - | - | - | - | - |" in lines
    assert "| MobileNetV2 W2A4 | - | - | - | - | - | - |" in lines
    # a docs block named "goal_like_for_like" is rewritten with it
    doc = tmp_path / "page.md"
    doc.write_text("a\n<!-- table: goal_like_for_like -->\nold\n<!-- /table -->\n")
    assert plots.update_doc(doc) == ["goal_like_for_like"] and plots.stale_tables(doc) == []
    assert plots.like_for_like_goal_table() in doc.read_text()


def test_headline_refuses_a_broken_json(tmp_path, monkeypatch):
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    (tmp_path / "accuracy_main.json").write_text('{"rows": ')
    with pytest.raises(SystemExit, match="accuracy_main.json"):
        plots.headline_table()
    row = _row("resnet20", "W4A4", "attention", (0, 1, 2), 91.5)
    del row["calib_seconds"]  # a JSON older than the table's columns
    (tmp_path / "accuracy_main.json").write_text(json.dumps({"command": "c", "rows": [row]}))
    with pytest.raises(SystemExit, match="accuracy_main.json: row 0 .* has no calib_seconds"):
        plots.headline_table()


def test_the_goal_table_compares_the_default_with_the_best_peer_row(tmp_path, monkeypatch):
    """Issue 34's goal per setting: the best of the 20k peer rows, the gap, the time ratio; a
    loss beyond the larger spread or less than 4x the speed is named, a missing row is '-'."""
    plots = load_plots()
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    rows = [_row("resnet20", "W4A4", "attnround", (0, 1, 2), 92.00, 60.0),  # 0.123 spreads
            _row("resnet20", "W4A4", "qdrop_v1", (0, 1, 2), 92.10, 600.0),  # level, 10x
            _row("resnet20", "W4A4", "brecq_v1", (0, 1, 2), 91.00, 1200.0),  # not the best
            _row("resnet20", "W2A2", "attnround", (0, 1, 2), 90.00, 60.0),
            _row("resnet20", "W2A2", "qdrop", (0, 1, 2), 90.50, 180.0),  # behind, only 3x
            _row("resnet20", "W3A3", "attnround", (0, 1, 2), 91.00, 60.0),
            _row("resnet20", "W3A3", "qdrop_v1", (0,), 90.00, 600.0)]  # one seed: no row
    (tmp_path / "accuracy_recipes.json").write_text(json.dumps({"command": "r", "rows": rows}))
    lines = plots.goal_table().splitlines()
    assert ("| ResNet-20 W4A4 | 92.00 ± 0.12 (1.0 min) | QDrop's recipe, v1: 92.10 ± 0.12 "
            "(10.0 min) | -0.10 | 10x | - | reached |") in lines
    assert ("| ResNet-20 W2A2 | 90.00 ± 0.12 (1.0 min) | QDrop's recipe: 90.50 ± 0.12 "
            "(3.0 min) | -0.50 | 3x | - | **behind by 0.50 pp; only 3.0x faster** |") in lines
    assert "| ResNet-20 W3A3 | - | - | - | - | - | - |" in lines
    assert "| MobileNetV2 W2A2 | - | - | - | - | - | - |" in lines
    # README's headline carries it, and a docs block named "goal" is rewritten with it
    assert plots.goal_table().rstrip("\n") in plots.headline_table()
    doc = tmp_path / "page.md"
    doc.write_text("a\n<!-- table: goal -->\nold\n<!-- /table -->\nb\n")
    assert plots.stale_tables(doc) == ["goal"]
    assert plots.update_doc(doc) == ["goal"] and plots.stale_tables(doc) == []
    assert doc.read_text() == f"a\n<!-- table: goal -->\n{plots.goal_table()}<!-- /table -->\nb\n"
