import warnings

import pytest
import torch
from torch import nn

from attnround_pl.models import available_models, build_model, split_units
from attnround_pl.quant import (
    QuantConfig,
    execution_order,
    quant_layers,
    quantizable_layers,
    quantize_model,
)

INPUT = {"resnet20": (1, 1, 28, 28), "mobilenetv2": (1, 1, 28, 28)}
KINDS = {
    "resnet20": "BasicBlock",
    "mobilenetv2": "InvertedResidual",
    "resnet18": "BasicBlock",
    "resnet50": "Bottleneck",
    "mobilenet_v2": "InvertedResidual",
    "regnet_x_600mf": "RegNetBlock",
    "mnasnet1_0": "MnasNetBlock",
}


def _forward_order(qmodel, shape):
    order = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n))
        for n, m in quant_layers(qmodel).items()
    ]
    for layer in quant_layers(qmodel).values():
        layer.input_quantizer.enabled = False
    with torch.no_grad():
        qmodel(torch.randn(shape))
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("arch", available_models())
def test_every_layer_in_exactly_one_unit_in_forward_order(arch):
    model = build_model(arch, weights=None, num_classes=10)
    qmodel = quantize_model(model, QuantConfig(rounding="nearest"))
    units = split_units(qmodel)
    covered = [layer for u in units for layer in u.layers]
    assert sorted(covered) == sorted(quant_layers(qmodel))
    assert len(covered) == len(set(covered))
    assert KINDS[arch] in {u.kind for u in units}
    order = _forward_order(qmodel, INPUT.get(arch, (1, 3, 32, 32)))
    first_call = {name: order.index(name) for name in covered}
    # units follow forward order: each unit's layers all run after the previous unit's first layer
    starts = [min(first_call[layer] for layer in u.layers) for u in units]
    assert starts == sorted(starts)
    # the registry rule: blocks by their class, every other layer alone, named by module path
    assert all(u.name == u.path and not u.is_graph for u in units)
    assert {u.rule for u in units if u.kind != "layer"} == {"registry"}
    assert {u.rule for u in units if u.kind == "layer"} == {"layer"}
    assert split_units(qmodel, example=torch.randn(INPUT.get(arch, (1, 3, 32, 32)))) == units
    # registration order is execution order here: first/last layer and seeds as before
    assert execution_order(model) == [n for n, _ in quantizable_layers(model)]
    assert qmodel.never_run_layers == []


def test_unknown_architecture_falls_back_with_warning():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    qmodel = quantize_model(model, QuantConfig(rounding="nearest"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        units = split_units(qmodel)
    assert [u.layers for u in units] == [["0"], ["3"]]
    assert any("one reconstruction unit per" in str(w.message) for w in caught)


def test_unknown_architecture_with_an_example_is_cut_by_its_graph():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    qmodel = quantize_model(model, QuantConfig(rounding="nearest"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        units = split_units(qmodel, example=torch.randn(2, 3, 5, 5))
    assert [(u.name, u.layers, u.rule) for u in units] == [
        ("0", ["0"], "graph"), ("3", ["3"], "graph")]
