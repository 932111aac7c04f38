import json

import pytest
from benchmark_scripts import load_benchmark


def _load():
    return load_benchmark("paired_table")


def _pair(model: str, setting: str, seed: int, before: float, after: float) -> dict:
    return {"before": f"benchmarks/runs/x/{model}_{setting}_qdrop_s{seed}",
            "after": f"benchmarks/runs/x/{model}_{setting}_attnround_blocks_s{seed}",
            "top1_before": before, "top1_after": after, "only_before": 100,
            "only_after": 110, "change": after - before, "se": 0.2}


def _write(folder, model, setting, tops, pooled=0.1, pooled_se=0.12, pairs_se=0.05):
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [_pair(model, setting, seed, b, a) for seed, (b, a) in enumerate(tops)]
    (folder / f"paired_{model}_{setting}.json").write_text(json.dumps({
        "command": "python benchmarks/paired.py ...", "pairs": pairs, "pooled_change": pooled,
        "pooled_se": pooled_se, "mean_of_pairs": pooled, "pairs_sd": None,
        "pairs_se": pairs_se if len(pairs) > 1 else None}))


def _suite(results, model, setting, by_method):
    rows = [{"model": model, "setting": setting, "method": method, "seeds": sorted(tops),
             "per_seed": {str(s): {"quant_top1": t} for s, t in tops.items()}}
            for method, tops in by_method.items()]
    (results / "accuracy_like_for_like.json").write_text(json.dumps({"rows": rows}))


def test_each_setting_takes_its_most_paired_sitting_in_model_and_setting_order(tmp_path):
    table = _load()
    _write(tmp_path / "goal_paired_a", "mobilenetv2", "W3A3", [(90.29, 90.53)])
    _write(tmp_path / "goal_paired_b", "mobilenetv2", "W3A3",
           [(90.29, 90.53), (90.31, 90.32), (90.48, 90.43)], pooled=0.07, pooled_se=0.16,
           pairs_se=0.09)
    _write(tmp_path / "goal_paired_a", "resnet20", "W2A2", [(90.53, 90.22)], pooled=-0.31,
           pooled_se=0.23)
    _write(tmp_path / "goal_paired_a", "resnet20", "W4A4", [(92.36, 92.57)], pooled=0.21,
           pooled_se=0.15)
    rows = table.paired_rows(tmp_path)
    assert [(r.model, r.setting, r.sitting) for r in rows] == [
        ("resnet20", "W4A4", "a"), ("resnet20", "W2A2", "a"), ("mobilenetv2", "W3A3", "b")]
    mobile = rows[-1]
    assert (mobile.before, mobile.after, mobile.seeds) == ("qdrop", "attnround_blocks", [0, 1, 2])
    assert mobile.changes == pytest.approx([0.24, 0.01, -0.05])
    lines = table.paired_table(tmp_path).splitlines()
    assert len(lines) == 2 + 3
    assert lines[-1] == ("| MobileNetV2 W3A3 | b | 0, 1, 2 | `qdrop` 90.36 ± 0.09 "
                         "| `attnround_blocks` 90.43 ± 0.09 | +0.24, +0.01, -0.05 "
                         "| **+0.07** ± 0.16 (-0.24 to +0.38) | 0.09 | - | - |")
    # one pair: the top-1s alone, no SE over the pairs
    assert lines[2].startswith("| ResNet-20 W4A4 | a | 0 | `qdrop` 92.36 | `attnround_blocks` "
                               "92.57 | +0.21 | **+0.21** ± 0.15 (-0.08 to +0.50) | - |")


def test_the_suites_change_is_over_the_rows_seeds_and_absent_where_a_seed_is(tmp_path):
    table = _load()
    _write(tmp_path / "goal_paired_a", "resnet20", "W2A4", [(92.2, 92.0), (92.1, 92.3)])
    _suite(tmp_path, "resnet20", "W2A4", {"qdrop": {0: 92.2, 1: 92.2, 2: 92.1},
                                          "attnround_blocks": {0: 92.1, 1: 92.1, 2: 92.0}})
    (row,) = table.paired_rows(tmp_path)
    assert table.suite_change(row, table.suite_rows(tmp_path)) == "-0.10"
    # here less the suite's, run by run: qdrop 0.0, -0.1; attnround_blocks -0.1, +0.2
    assert table.host_moves(row, table.suite_rows(tmp_path)) == "-0.10 to +0.20"
    _suite(tmp_path, "resnet20", "W2A4", {"qdrop": {0: 92.2, 2: 92.1},
                                          "attnround_blocks": {0: 92.1, 1: 92.1, 2: 92.0}})
    assert table.suite_change(row, table.suite_rows(tmp_path)) == "-"
    assert table.host_moves(row, table.suite_rows(tmp_path)) == "-"


def test_a_file_that_is_not_one_recipe_against_another_seed_with_seed_is_refused(tmp_path):
    table = _load()
    folder = tmp_path / "goal_paired_a"
    _write(folder, "resnet20", "W2A4", [(92.2, 92.0), (92.1, 92.3)])
    path = folder / "paired_resnet20_W2A4.json"
    data = json.loads(path.read_text())
    data["pairs"][1]["after"] = data["pairs"][1]["after"].replace("_s1", "_s2")
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="paired_resnet20_W2A4.json: its pairs are not"):
        table.paired_rows(tmp_path)
    data["pairs"][1]["after"] = "benchmarks/runs/x/somewhere_else"
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="'somewhere_else' is not a resnet20 W2A4 run"):
        table.paired_rows(tmp_path)
    path.write_text(json.dumps({**data, "pooled_change": None}))
    with pytest.raises(SystemExit, match="no pairs pooled"):
        table.paired_rows(tmp_path)
    path.write_text("{")
    with pytest.raises(SystemExit, match="unreadable"):
        table.paired_rows(tmp_path)


def test_the_docs_block_is_the_table_of_the_committed_files():
    plots = load_benchmark("plots")
    assert plots.block_table("paired") + "\n" == _load().paired_table()
    assert "MobileNetV2 W3A3" in plots.block_table("paired")
