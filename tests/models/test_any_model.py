"""Every torchvision CNN family end to end: calibrate, fidelity, save, reload, state file, ONNX.

The fast tests run one model per family (``any_model.FAMILIES``; the three heaviest families'
models are marked slow); the slow test runs every model of those families and writes
``benchmarks/results/any_model.{json,md}``.
"""

import importlib
import sys
from pathlib import Path

import pytest
import torchvision

from attnround_pl.models import ModelLoadError, build_model

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _any_model():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("any_model")


AM = _any_model()


def test_every_torchvision_family_is_known():
    """A family torchvision adds must be put in FAMILIES (tested) or EXCLUDED (refused)."""
    names = torchvision.models.list_models(module=torchvision.models)
    names += torchvision.models.list_models(module=torchvision.models.segmentation)
    unknown = sorted(n for n in names if AM.family_of(n) is None)
    assert unknown == [], f"families neither tested nor excluded: {unknown}"
    assert all(AM.family_of(rep) == fam for fam, rep in AM.FAMILIES.items())


@pytest.mark.parametrize(
    "name",
    [
        "vit_b_16",
        "swin_t",
        "maxvit_t",
        "fasterrcnn_resnet50_fpn",
        "r3d_18",
        "raft_small",
        "quantized_resnet18",
    ],
)
def test_excluded_models_are_refused_with_the_reason(name):
    with pytest.raises(ModelLoadError) as err:
        build_model(name, weights=None)
    message = str(err.value)
    assert "\n" not in message and name in message
    assert any(
        w in message
        for w in ("transformer", "detection", "video", "optical-flow", "quantized model")
    )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.slow] if family in AM.SLOW_FAMILIES else [])
        for family, name in sorted(AM.FAMILIES.items())
    ],
)
def test_one_model_per_family_end_to_end(name):
    row = AM.run_model(name, iters=1, images=4)
    assert row.quantized_layers > 0 and sum(row.units.values()) > 0
    assert row.reload_max_diff == 0.0  # the saved model reloads bit for bit
    assert row.state_reload_max_diff == 0.0  # so does the packed state file
    assert AM.onnx_agrees(row), row
    assert row.output_sqnr_db == row.output_sqnr_db  # a number, not NaN


@pytest.mark.slow
def test_every_model_of_every_family():
    rows = AM.run_all(AM.in_scope())
    AM.write_table(rows, "pytest -m slow tests/test_any_model.py")
    failed = [r for r in rows if not isinstance(r, AM.Row)]
    assert failed == []
    assert all(AM.onnx_agrees(r) and r.reload_max_diff == r.state_reload_max_diff == 0.0
               for r in rows)
