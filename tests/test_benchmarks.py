import importlib.util
from pathlib import Path

import pytest
import yaml

from attnround_pl import cli

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_suite_row_is_a_valid_calibrate_command(capsys):
    acc = _load("accuracy")
    rows = {(m, s, meth) for models, plan in acc.SUITES.values() for m in models
            for block in plan for s in block.settings for meth in block.methods}  # fmt: skip
    assert ("resnet20", "W4A4", "attention") in rows and len(rows) > 50
    pairs = {(s, "attention") for _, s, _ in rows} | {("W4A4", meth) for _, _, meth in rows}
    for setting, method in sorted(pairs):
        args = ["calibrate", "--config", str(BENCH.parent / "configs" / "resnet20_w4a4.yaml"),
                *acc.setting_args(setting), *acc.METHODS[method], "--print_config"]  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            cli.main(args)
        assert stop.value.code == 0, (setting, method)
        cfg = yaml.safe_load(capsys.readouterr().out)
        if setting in acc.BITS:
            assert (cfg["quant"]["w_bits"], cfg["quant"]["a_bits"]) == acc.BITS[setting]
    qdrop = dict(zip(acc.METHODS["qdrop"][::2], acc.METHODS["qdrop"][1::2], strict=True))
    assert qdrop["--recon.act_lr"] == "4e-5" and qdrop["--quant.drop_prob"] == "0.5"
    assert qdrop["--recon.iters"] == "20000" and qdrop["--quant.rounding"] == "adaround"
