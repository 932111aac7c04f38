import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from attnround_pl import cli

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:  # the scripts import their sibling markdown_table
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_suite_row_is_a_valid_calibrate_command(capsys):
    acc = _load("accuracy")
    rows = {(m, s, meth) for models, plan in acc.SUITES.values() for m in models
            for block in plan for s in block.settings for meth in block.methods}
    assert ("resnet20", "W4A4", "attention") in rows and len(rows) > 50
    pairs = {(s, "attention") for _, s, _ in rows} | {("W4A4", meth) for _, _, meth in rows}
    for setting, method in sorted(pairs):
        args = ["calibrate", "--config", str(BENCH.parent / "configs" / "resnet20_w4a4.yaml"),
                *acc.setting_args(setting), *acc.METHODS[method], "--print_config"]
        with pytest.raises(SystemExit) as stop:
            cli.main(args)
        assert stop.value.code == 0, (setting, method)
        cfg = yaml.safe_load(capsys.readouterr().out)
        if setting in acc.BITS:
            assert (cfg["quant"]["w_bits"], cfg["quant"]["a_bits"]) == acc.BITS[setting]
        if "@W" in setting:  # mixed, no larger than uniform W<b>
            assert cfg["quant"]["mixed"]["budget_bits"] == int(setting.split("@W")[1])
            assert cfg["quant"]["mixed"]["bit_list"] == [int(c) for c in setting[2:-3]]
    qdrop = dict(zip(acc.METHODS["qdrop"][::2], acc.METHODS["qdrop"][1::2], strict=True))
    assert qdrop["--recon.act_lr"] == "4e-5" and qdrop["--quant.drop_prob"] == "0.5"
    assert qdrop["--recon.iters"] == "20000" and qdrop["--quant.rounding"] == "adaround"
    assert acc.METHODS["attention_cosine"] == ["--recon.lr_schedule", "cosine"]


def _row(method, setting="W3A3", seeds=(0,), top1=90.0):
    return {"model": "resnet20", "setting": setting, "method": method, "seeds": list(seeds),
            "top1": top1, "top1_std": 0.0, "nearest_top1": 80.0, "float_top1": 92.0,
            "calib_seconds": 100.0}


def test_plots_keep_the_row_with_most_seeds_and_draw_the_tau_sweep(tmp_path, monkeypatch):
    import json

    plots = _load("plots")
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    one = {"rows": [_row("attention", top1=91.0), _row("attention_tau0", top1=88.0)]}
    three = {"rows": [_row("attention", seeds=(0, 1, 2), top1=91.5)]}
    (tmp_path / "accuracy_b.json").write_text(json.dumps(one))  # read after a: must not win
    (tmp_path / "accuracy_a.json").write_text(json.dumps(three))
    rows = {r["method"]: r for r in plots.load_rows()}
    assert rows["attention"]["top1"] == 91.5 and len(rows) == 2
    assert plots.tau_of("attention") == 0.5 and plots.tau_of("attention_tau0.25") == 0.25
    assert plots.tau_of("adaround") is None
    assert plots.tau_sweep(list(rows.values()), tmp_path / "tau.png")
    assert (tmp_path / "tau.png").stat().st_size > 1000
    # one panel per (model, setting), taus in order, a setting with one tau left out
    other = [{**_row(m, "W3A32", top1=t), "model": "mobilenetv2"}
             for m, t in (("attention_tau1.0", 91.0), ("attention", 91.8))]
    curves = plots.tau_curves([*rows.values(), *other, _row("attention", "W2A2")])
    assert list(curves) == [("mobilenetv2", "W3A32"), ("resnet20", "W3A3")]
    assert [t for t, _ in curves["mobilenetv2", "W3A32"]] == [0.5, 1.0]
    assert plots.tau_sweep([*rows.values(), *other], tmp_path / "tau2.png")
    assert not plots.tau_sweep([rows["attention"]], tmp_path / "none.png")


def test_every_benchmark_method_has_its_own_colour():
    plots, acc = _load("plots"), _load("accuracy")
    colours = plots.method_colours([_row(m) for m in acc.METHODS])
    assert len(colours) == len(acc.METHODS) and len(set(colours.values())) == len(acc.METHODS)


def test_accuracy_plot_draws_collapsed_and_off_scale_methods(tmp_path):
    plots = _load("plots")
    rows = [_row("attention", "W3A3", top1=91.0), _row("attention", "W2A4", top1=89.5),
            _row("nearest", "W3A3", top1=80.0), _row("nearest", "W2A4", top1=30.0),
            _row("floor", "W3A3", top1=10.0)]
    plots.accuracy_by_setting(rows, "resnet20", tmp_path / "acc.png", plots.method_colours(rows))
    assert (tmp_path / "acc.png").stat().st_size > 1000
    rows += [_row("attention", "W4A32", top1=91.9), _row("nearest", "W3A32", top1=85.0)]
    plots.accuracy_by_setting(rows, "resnet20", tmp_path / "two.png", plots.method_colours(rows))
    assert (tmp_path / "two.png").stat().st_size > 1000


def test_accuracy_plot_puts_weights_only_settings_in_their_own_panel():
    plots = _load("plots")
    panels = plots.setting_panels({"W2A2", "W4A32", "W3A3", "W2A4", "W3A32", "W4A4"})
    assert panels == [("weights only (A32)", ["W4A32", "W3A32"]),
                      ("weights and activations", ["W4A4", "W3A3", "W2A4", "W2A2"])]
    assert plots.setting_panels({"W3A3", "W4A4"}) == [("weights and activations",
                                                        ["W4A4", "W3A3"])]


def test_accuracy_plot_sets_methods_apart_around_each_setting():
    plots = _load("plots")
    offsets = [plots.dodge(i, 3) for i in range(3)]
    assert offsets == pytest.approx([-plots.DODGE, 0.0, plots.DODGE])
    assert plots.dodge(0, 1) == 0.0
    assert 20 * plots.DODGE < 1  # twenty methods stay within their own setting


def test_accuracy_plot_breaks_a_line_where_a_method_has_no_row():
    import math

    xs, ys, errs = _load("plots").gapped([(1, 90.0, 0.1), (3, 91.0, 0.0)])
    assert xs == [1, 2, 3] and ys[0] == 90.0 and ys[2] == 91.0 and errs[0] == 0.1
    assert math.isnan(ys[1]) and math.isnan(errs[1])
    assert _load("plots").gapped([]) == ([], [], [])


def test_size_plot_draws_mixed_against_uniform_bits(tmp_path):
    plots = _load("plots")
    rows = [{**_row("attention", s, top1=t), "size_mb": mb}
            for s, t, mb in [("W3A4", 92.2, 0.097), ("W4A4", 92.5, 0.129), ("W5A4", 92.5, 0.162),
                             ("MP3456", 92.4, 0.169), ("MP3456@W4", 92.3, 0.128)]]
    rows.append({**_row("adaround", "MP345", top1=92.0), "size_mb": 0.14})  # not Attention Round
    assert plots.size_vs_accuracy(rows, tmp_path / "size.png")
    assert (tmp_path / "size.png").stat().st_size > 1000
    assert not plots.size_vs_accuracy(rows[:3], tmp_path / "none.png")  # no mixed row: no plot
    assert not (tmp_path / "none.png").exists()


def test_ms_per_iteration_sums_the_units_that_learned():
    acc = _load("accuracy")
    units = [{"learned": True, "iters": 2000, "seconds": 20.0},
             {"learned": True, "iters": 2000, "seconds": 10.0},
             {"learned": False, "iters": 0, "seconds": 0.1}]
    assert acc.ms_per_iteration({"units": units}) == 15.0
    assert acc.ms_per_iteration({"units": units[2:]}) is None


def _report(runs, name, top1, seconds_per_unit=20.0):
    """A calibration's report.json as ``attnround-pl calibrate`` writes it (the keys rows read)."""
    import json

    report = {"quant_top1": top1, "quant_top5": 99.0, "nearest_top1": 80.0,
              "calib_seconds": 100.0, "peak_rss_mb": 900.0, "size_mb": 0.25, "onnx_top1": top1,
              "onnx_argmax_mismatch": 1, "machine": "2 CPU cores",
              "units": [{"learned": True, "iters": 2000, "seconds": seconds_per_unit}]}
    (runs / name).mkdir(parents=True)
    (runs / name / "report.json").write_text(json.dumps(report))


def _committed(method, setting, seeds, top1, std=0.0):
    """A row as accuracy.py wrote it before rows kept their seeds (no ``per_seed``)."""
    return {**_row(method, setting, seeds, top1), "top1_std": std, "top5": 99.5, "drop": 1.0,
            "ms_per_iter": 15.0, "peak_rss_mb": 1000.0, "size_mb": 0.25, "onnx_top1": top1,
            "onnx_argmax_mismatch": 0, "machine": "2 CPU cores"}


def test_suite_rows_reuse_the_committed_seeds_and_add_new_runs(tmp_path):
    acc = _load("accuracy")
    runs = tmp_path / "runs"
    _report(runs, "resnet20_W3A3_attention_s1", 92.0, seconds_per_unit=20.0)  # 10 ms/iter
    one_seed = _committed("attention", "W3A3", (0,), 90.0)
    row = acc.suite_row("resnet20", "W3A3", "attention", [0, 1], runs, one_seed, True)
    assert row["seeds"] == [0, 1] and row["top1"] == pytest.approx(91.0)
    assert row["top1_std"] == pytest.approx(1.0) and row["ms_per_iter"] == pytest.approx(12.5)
    assert row["peak_rss_mb"] == 1000.0 and row["onnx_argmax_mismatch"] == 1
    assert sorted(row["per_seed"]) == ["0", "1"] and row["per_seed"]["1"]["quant_top1"] == 92.0
    # the row now carries both seeds: a later table reads them back without any run folder
    again = acc.suite_row("resnet20", "W3A3", "attention", [0, 1], tmp_path / "none", row, True)
    assert again == row
    # several seeds and no per_seed: kept whole while none of its seeds has a run folder
    three = _committed("attention", "W2A2", (0, 1, 2), 90.4, std=0.15)
    assert acc.suite_row("resnet20", "W2A2", "attention", [0, 1, 2], runs, three, True) is three
    _report(runs, "resnet20_W2A2_attention_s0", 89.0)  # ... not mixed with a new run
    mixed = acc.suite_row("resnet20", "W2A2", "attention", [0, 1, 2], runs, three, True)
    assert mixed["seeds"] == [0] and mixed["top1"] == 89.0
    assert acc.suite_row("resnet20", "W4A4", "attention", [0], runs, None, True) is None


def test_accuracy_keeps_the_committed_rows_a_filtered_run_does_not_reach(tmp_path, monkeypatch):
    import json

    acc = _load("accuracy")
    runs, out = tmp_path / "runs", tmp_path / "results"
    out.mkdir()
    _report(runs, "resnet20_W2A2_attention-aquant_s0", 90.7)
    kept = _committed("attention", "W3A3", (0, 1, 2), 92.2, std=0.02)
    gone = _committed("ceil", "W3A3", (0,), 10.0)  # no longer in the suite
    (out / "accuracy_aquant.json").write_text(json.dumps({"command": "x", "rows": [kept, gone]}))
    argv = ["accuracy.py", "--suite", "aquant", "--settings", "W2A2", "--existing-only",
            "--runs", str(runs), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    acc.main()
    result = json.loads((out / "accuracy_aquant.json").read_text())
    assert result["command"] == "python benchmarks/accuracy.py --suite aquant"
    rows = {(r["setting"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {("W2A2", "attention+aquant"), ("W3A3", "attention")}
    assert rows["W3A3", "attention"] == kept
    assert rows["W2A2", "attention+aquant"]["top1"] == 90.7
    assert rows["W2A2", "attention+aquant"]["float_top1"] == acc.float_top1("resnet20")


def test_a_suite_reuses_other_suites_rows_only_when_asked(tmp_path, monkeypatch):
    import json

    acc = _load("accuracy")
    runs, out = tmp_path / "runs", tmp_path / "results"
    out.mkdir()
    elsewhere = {**_committed("attention", "W3A3", (0, 1, 2), 89.9, std=0.1),
                 "model": "mobilenetv2"}
    (out / "accuracy_mobilenetv2.json").write_text(json.dumps({"rows": [elsewhere]}))
    _report(runs, "mobilenetv2_W3A32_attention_s0", 91.8)
    argv = ["accuracy.py", "--suite", "tau", "--existing-only", "--runs", str(runs),
            "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    acc.main()
    tau = json.loads((out / "accuracy_tau.json").read_text())
    # without --reuse-suites only this suite's own runs; the W3A32 block is MobileNetV2's alone
    assert list(map(acc.row_key, tau["rows"])) == [("mobilenetv2", "W3A32", "attention")]
    (out / "accuracy_tau.json").unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--reuse-suites"])
    acc.main()
    tau = json.loads((out / "accuracy_tau.json").read_text())
    rows = {acc.row_key(r): r for r in tau["rows"]}
    assert set(rows) == {("mobilenetv2", "W3A3", "attention"),
                         ("mobilenetv2", "W3A32", "attention")}
    assert rows["mobilenetv2", "W3A3", "attention"] == elsewhere
    assert rows["mobilenetv2", "W3A32", "attention"]["top1"] == 91.8
    assert tau["command"] == "python benchmarks/accuracy.py --suite tau --reuse-suites"


def test_a_corrupt_results_file_or_report_stops_with_its_name_and_keeps_the_file(
    tmp_path, monkeypatch
):
    acc = _load("accuracy")
    runs, out = tmp_path / "runs", tmp_path / "results"
    out.mkdir()
    argv = ["accuracy.py", "--suite", "aquant", "--settings", "W2A2", "--existing-only",
            "--runs", str(runs), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    results = out / "accuracy_aquant.json"
    for text, what in (('{"rows": [', "unreadable"), ("[1, 2]", "JSON list, not an object"),
                       ('{"command": "x"}', "no list of 'rows'")):
        results.write_text(text)
        with pytest.raises(SystemExit, match=what) as stop:
            acc.main()
        assert str(results) in str(stop.value) and "git checkout" in str(stop.value)
        assert results.read_text() == text  # nothing overwritten
    results.unlink()
    _report(runs, "resnet20_W2A2_attention-aquant_s0", 90.7)
    report = runs / "resnet20_W2A2_attention-aquant_s0" / "report.json"
    report.write_text('{"quant_top1": 9')
    with pytest.raises(SystemExit, match="delete the run folder") as stop:
        acc.main()
    assert str(report) in str(stop.value) and not results.exists()


def test_readme_tables_are_rewritten_from_the_json_and_nothing_else(tmp_path, monkeypatch):
    import json

    plots = _load("plots")
    monkeypatch.setattr(plots, "RESULTS", tmp_path)
    row = {**_row("attention", seeds=(0, 1, 2), top1=91.234), "top1_std": 0.05, "drop": 0.77,
           "top5": 99.871, "machine": "2 CPU cores",
           "ms_per_iter": None, "peak_rss_mb": 1000.0, "size_mb": 0.125, "onnx_top1": 91.25,
           "onnx_argmax_mismatch": 3}
    (tmp_path / "accuracy_x.json").write_text(json.dumps({"command": "cmd x", "rows": [row]}))
    readme = tmp_path / "README.md"
    text = "intro\n<!-- table: accuracy_x.json -->\nstale table\n<!-- /table -->\nafter\n"
    readme.write_text(text)
    assert plots.update_readme(readme) == ["accuracy_x.json"]
    assert _load("accuracy").HEADER in readme.read_text()  # accuracy.py prints the same table
    new = readme.read_text()
    head = "intro\n<!-- table: accuracy_x.json -->\n`cmd x` (accuracy_x.json; 2 CPU cores):"
    assert new.startswith(head)
    assert new.endswith("|\n<!-- /table -->\nafter\n") and "stale" not in new
    row = "| resnet20 | W3A3 | attention | 91.23 ± 0.05 | 99.87 | 0.77 | 100 | - | - | 1000 |"
    assert row in new  # no reference iterations, no ms/iter for this row
    plots.update_readme(readme)
    assert readme.read_text() == new  # idempotent
    readme.write_text(text.replace("accuracy_x", "accuracy_missing"))
    with pytest.raises(FileNotFoundError, match="accuracy_missing.json"):
        plots.update_readme(readme)
    assert "stale table" in readme.read_text()  # nothing written


def test_mixed_sizes_row_fits_its_budget_and_prints_every_layer():
    sizes = _load("mixed_sizes")
    row = sizes.allocation_row("resnet20", [3, 4, 5, 6], {"budget_bits": 4})
    assert row["size_mb"] <= row["uniform_mb"][4] and row["budget_bits"] == 4
    assert len(row["bits"]) == 22 and row["bits"][0] == row["bits"][-1] == 8
    assert set(row["bits"][1:-1]) <= {3, 4, 5, 6} and len(set(row["bits"][1:-1])) > 1
    free = sizes.allocation_row("resnet20", [3, 4, 5, 6], {"eps2": 1e-3})
    assert free["size_mb"] > free["uniform_mb"][4]  # unbudgeted, eq. 12 gives wide layers more
    text = sizes.line(row)
    assert text.startswith("| resnet20 | [3, 4, 5, 6] | ") and "(budget W4)" in text
    assert text.endswith("`" + "".join(map(str, row["bits"])) + "` |")


def test_speed_times_every_unit_against_its_float_forward_backward(tmp_path, monkeypatch, capsys):
    import json

    from attnround_pl.models import build_model, split_units
    from attnround_pl.quant import QuantConfig, quantize_model

    speed = _load("speed")
    argv = ["speed.py", "--model", "resnet20", "--images", "random", "--iters", "12",
            "--batch", "8", "--calib", "16", "--out", str(tmp_path), "--as-run"]
    monkeypatch.setattr(sys, "argv", argv)
    speed.main()
    result = json.loads((tmp_path / "speed_resnet20_random28_as-run.json").read_text())
    qmodel = quantize_model(build_model("resnet20", weights=None), QuantConfig())
    units = [u.name for u in split_units(qmodel)]
    assert [r["unit"] for r in result["rows"]] == units and len(units) == 11
    for row in result["rows"]:
        assert min(row["lightning_ms"], row["bare_ms"], row["float_fwd_bwd_ms"]) > 0
        assert row["ratio"] == pytest.approx(row["lightning_ms"] / row["float_fwd_bwd_ms"])
        # the steady clock times steps 11 and 12 (the second batch), a part of the whole fit
        assert 0 < row["lightning_steady_ms"] <= 6 * row["lightning_ms"]
        assert row["ratio_steady"] == pytest.approx(
            row["lightning_steady_ms"] / row["float_fwd_bwd_ms"]
        )
    for key, total in result["total"].items():
        assert total == pytest.approx(sum(r[key] for r in result["rows"]))
    assert result["image_size"] == [1, 28, 28] and result["images"] == "random"
    assert result["compile"] == "off" and result["as_run"] is True
    table = capsys.readouterr().out
    assert table.count("\n| layer") == 9 and "| all units |" in table


def test_speed_refuses_imagenet_models_without_random_images_and_too_few_images(
    monkeypatch, capsys
):
    speed = _load("speed")
    with pytest.raises(SystemExit, match="no ImageNet here"):
        speed.calibration_batches("resnet18", "fmnist", 64, 224)
    batches = speed.calibration_batches("resnet18", "random", 300, 32)
    assert [tuple(b.shape) for b in batches] == [(256, 3, 32, 32), (44, 3, 32, 32)]
    refusals = {"--calib 32 --batch 64": "holds fewer images than one --batch 64",
                "--cuda-graph": "--cuda-graph needs --accelerator gpu",
                "--iters 10": "--iters 10: more than 10"}
    for argv, why in refusals.items():
        monkeypatch.setattr(sys, "argv", ["speed.py", *argv.split()])
        with pytest.raises(SystemExit) as stop:
            speed.main()
        assert stop.value.code == 2 and why in capsys.readouterr().err, argv


def test_speed_table_puts_before_after_and_as_run_side_by_side(tmp_path):
    import json

    speed_table = _load("speed_table")

    def write(kind, run, steady, floor, name="speed_resnet20.json"):
        folder = tmp_path / kind / run
        folder.mkdir(parents=True, exist_ok=True)
        row = {"unit": "conv1", "lightning_steady_ms": steady, "bare_ms": steady / 2}
        rows = [{**row, "float_fwd_bwd_ms": floor, "ratio_steady": steady / floor}]
        total = {"lightning_steady_ms": steady, "bare_ms": steady / 2, "float_fwd_bwd_ms": floor}
        name = name.replace(".json", "_as-run.json") if kind == "as-run" else name
        (folder / name).write_text(json.dumps(
            {"model": "resnet20", "image_size": [1, 28, 28], "rows": rows, "total": total}))

    write("before", "r1", 70.0, 20.0)
    write("after", "r1", 36.0, 15.0)
    write("as-run", "r1", 40.0, 16.0)
    write("before", "r2", 50.0, 10.0)
    table = speed_table.summary(tmp_path).splitlines()
    assert table[2] == (
        "| resnet20 28x28 px, r1 | 70.0 | 20.0 | **3.50x** | 36.0 | 15.0 | "
        "**2.40x** | 40.0 | 16.0 | **2.50x** |"
    )
    assert table[3].startswith("| resnet20 28x28 px, r2 | 50.0 | 10.0 | **5.00x** | - | - | -")
    units = speed_table.units(tmp_path / "after" / "r1" / "speed_resnet20.json").splitlines()
    assert units[2] == "| conv1 | 36.00 | 18.00 | 15.00 | 2.40x |"
    assert units[-1] == "| all units | 36.00 | 18.00 | 15.00 | 2.40x |"
