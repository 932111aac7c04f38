"""Units of models without registered blocks: cut by their traced graph, or the fallbacks."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from attnround_pl.calib import build_unit_data
from attnround_pl.calib.cache import capture_graph
from attnround_pl.calib.memory import estimate_cache_bytes
from attnround_pl.models import EvalFloatOps, GraphMismatchError, split_units
from attnround_pl.models.graph_units import RegionModule
from attnround_pl.quant import (
    QuantConfig,
    QuantLayer,
    calibrate_activations,
    execution_order,
    float_ops,
    fold_batchnorms,
    quant_layers,
    quantizable_layers,
    quantize_model,
)


class UserNet(nn.Module):
    """Stem, a residual written in forward, a concat of two branches, a Conv1d after a
    reshape that reads the batch size, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)  # acts on the stem's output: the cut after the stem
        self.f = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.left = nn.Conv2d(8, 4, 1)
        self.right = nn.Conv2d(8, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Conv1d(8, 6, 3)
        self.fc = nn.Linear(6 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = x + self.f(x)
        x = torch.cat([self.left(x), F.relu(self.right(x))], 1)
        x = self.pool(x)
        x = x.reshape(x.size(0), x.size(1), -1)  # x.size(0): batch-dependent, blocks a cut
        x = self.head(x)
        return self.fc(x.flatten(1))


def _user_models():
    torch.manual_seed(0)
    net = UserNet().eval()
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 3, 8, 8)
    q = quantize_model(net, QuantConfig(w_bits=4, a_bits=4, rounding="nearest"))
    calibrate_activations(q, [x])
    f = copy.deepcopy(net)
    fold_batchnorms(f)
    return net, q, f, x


def _call_order(qmodel, x):
    order = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: order.append(n))
             for n, m in quant_layers(qmodel).items()]
    state = [(m, m.input_quantizer.enabled) for m in quant_layers(qmodel).values()]
    for m, _ in state:
        m.input_quantizer.enabled = False
    with torch.no_grad():
        qmodel(x)
    for h in hooks:
        h.remove()
    for m, enabled in state:
        m.input_quantizer.enabled = enabled
    return order


def _check_cover(qmodel, units, x):
    order = _call_order(qmodel, x)
    covered = [layer for u in units for layer in u.layers]
    assert sorted(covered) == sorted(set(order))  # every layer that runs, once
    assert len(covered) == len(set(covered))
    starts = [min(order.index(layer) for layer in u.layers) for u in units]
    assert starts == sorted(starts)


def test_user_cnn_residual_and_concat_are_one_unit_each():
    _, q, _, x = _user_models()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        units = split_units(q, example=x[:2])
    assert [u.layers for u in units] == [
        ["stem"], ["f.0", "f.2"], ["left", "right"], ["head"], ["fc"]]
    assert {u.rule for u in units} == {"graph"}
    assert [u.name for u in units] == ["stem", "f.0..f.2", "left..right", "head", "fc"]
    assert [u.kind for u in units] == ["layer", "region", "region", "layer", "layer"]
    assert all(u.path == "" and u.is_graph for u in units)
    _check_cover(q, units, x)


def test_graph_unit_cache_and_module_reproduce_the_models_values():
    _, q, f, x = _user_models()
    units = split_units(q, example=x[:2])
    residual, concat = units[1], units[2]
    with torch.no_grad():  # the values at the cuts, computed by hand from the modules
        q_stem = q.stem(x)
        q_res_in = q.act(q.bn(q_stem.clone()))
        q_res = q_res_in + q.f(q_res_in)
        f_res_in = f.act(f.bn(f.stem(x)))
        f_res = f_res_in + f.f(f_res_in)
        q_cat = torch.cat([q.left(q_res), F.relu(q.right(q_res))], 1)
    data = build_unit_data(q, f, residual, [x[:4], x[4:]])
    assert torch.equal(data.inputs, q_stem)  # the cut after the stem, before BN and ReLU
    assert torch.equal(data.targets, f_res)
    module = residual.module(q)
    assert isinstance(module, RegionModule)
    assert module.get_submodule("f.0") is q.f[0]  # shares the quantized layers
    kept = data.inputs.clone()
    with torch.no_grad():
        assert torch.equal(module(data.inputs), q_res)
    assert torch.equal(data.inputs, kept)  # the in-place ReLU did not write to the cache
    data = build_unit_data(q, f, concat, [x])
    assert torch.equal(data.inputs, q_res)
    with torch.no_grad():
        assert torch.equal(concat.module(q)(data.inputs), q_cat)
    for unit in units:  # every unit: module(cached inputs) == the quantized model's output
        data = build_unit_data(q, f, unit, [x])
        region = unit.region
        with torch.no_grad():
            out = unit.module(q)(data.inputs)
        assert torch.equal(out, capture_graph(q, region.trace.graph, region.outputs, [x]))
        assert out.shape == data.targets.shape
        assert estimate_cache_bytes(q, f, unit, [x]) == (
            data.inputs.nbytes + 2 * data.targets.nbytes)
    with torch.no_grad():
        assert torch.equal(data.targets, f(x))  # the last unit's target: the float output


def test_graph_unit_trains_only_its_quantized_layers_and_float_graph_must_match():
    net, q, f, x = _user_models()
    units = split_units(q, example=x[:2])
    module = units[3].module(q)  # pool, reshape, head
    module.train()
    assert module.get_submodule("head").training
    assert not module.get_submodule("pool").training
    with pytest.raises(GraphMismatchError, match="float model's graph does not match"):
        build_unit_data(q, net, units[1], [x])  # BN not folded: 'bn' is BatchNorm2d there
    build_unit_data(q, net, units[0], [x])  # the stem's region has no BN: fine


def test_float_ops_counts_what_stays_float():
    _, q, _, _ = _user_models()
    # act (ReLU module), f.1 (ReLU), add, cat, relu, pool, reshape, flatten; 'bn' folded
    # (Identity) and size() are not counted
    assert float_ops(q) == {"AdaptiveAvgPool2d": 1, "ReLU": 2, "add": 1, "cat": 1,
                            "flatten": 1, "relu": 1, "reshape": 1}


class Reordered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)  # registered first, runs last
        self.body = nn.Conv2d(4, 8, 3)
        self.stem = nn.Conv2d(3, 4, 3)  # registered last of the three, runs first
        self.aux = nn.Linear(8, 2)  # never runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def test_first_and_last_layer_by_execution_order_never_run_layers_stay_float():
    net = Reordered()
    assert [n for n, _ in quantizable_layers(net)] == ["fc", "body", "stem", "aux"]
    assert execution_order(net) == ["stem", "body", "fc"]
    q = quantize_model(net, QuantConfig(w_bits=4, a_bits=4, rounding="nearest"))
    bits = {n: (m.weight_quantizer.bits, m.input_quantizer.bits)
            for n, m in quant_layers(q).items()}
    assert bits == {"stem": (8, 8), "body": (4, 4), "fc": (8, 8)}
    assert type(q.aux) is nn.Linear and q.never_run_layers == ["aux"]
    units = split_units(q, example=torch.randn(2, 3, 6, 6))
    assert [u.layers for u in units] == [["stem"], ["body"], ["fc"]]


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Dropout(0.5), nn.Conv2d(4, 4, 1))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = self.b(x)
        return self.fc(x.mean((2, 3)))


def test_data_dependent_control_flow_falls_back_to_children_with_a_warning():
    torch.manual_seed(0)
    net = Branchy().eval()
    with pytest.warns(UserWarning, match="registration order"):
        q = quantize_model(net, QuantConfig(rounding="nearest"))
    x = torch.rand(4, 3, 8, 8)
    calibrate_activations(q, [x])
    with pytest.warns(UserWarning, match="cannot split Branchy by its traced graph"):
        units = split_units(q, example=x[:2])
    assert [(u.name, u.rule) for u in units] == [("a", "child"), ("b", "child"), ("fc", "layer")]
    assert units[1].layers == ["b.0", "b.2"]
    module = units[1].module(q)
    assert isinstance(module, EvalFloatOps) and module.inner is q.b
    module.train()
    assert module.inner[0].training and not module.inner[1].training  # Dropout stays off
    f = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cannot trace: folds inside Sequentials only
        fold_batchnorms(f)
    data = build_unit_data(q, f, units[1], [x])
    with torch.no_grad():
        assert torch.equal(data.targets, f.b(f.a(x)))
    with pytest.warns(UserWarning, match="one reconstruction unit per Conv/Linear layer"):
        units = split_units(q)  # no example: one unit per layer
    assert [u.rule for u in units] == ["layer"] * 4


def _tv(name, **kwargs):
    return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs).eval()


def _lraspp():
    seg = torchvision.models.segmentation
    return seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=10).eval()


TORCHVISION = {  # model, input size
    "squeezenet1_0": (lambda: _tv("squeezenet1_0"), 64),
    "googlenet": (lambda: _tv("googlenet", aux_logits=True, init_weights=False), 32),
    "inception_v3": (lambda: _tv("inception_v3", init_weights=False), 75),
    "densenet": (lambda: torchvision.models.DenseNet(8, (2, 3), 8, num_classes=10).eval(), 32),
    "shufflenet_v2_x0_5": (lambda: _tv("shufflenet_v2_x0_5"), 32),
    "mobilenet_v3_small": (lambda: _tv("mobilenet_v3_small"), 32),
    "lraspp": (_lraspp, 64),
}


@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_torchvision_graph_units_cover_every_layer_that_runs(arch):
    build, size = TORCHVISION[arch]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unfolded BatchNorms (densenet, aux heads)
        q = quantize_model(build(), QuantConfig(rounding="nearest"), search_scales=False)
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        units = split_units(q, example=x)
    assert {u.rule for u in units} == {"graph"}
    _check_cover(q, units, x)
    assert len({u.name for u in units}) == len(units)
    if arch in ("googlenet", "inception_v3"):  # eval-mode aux classifiers never run: float
        aux = "aux" if arch == "googlenet" else "AuxLogits"
        assert q.never_run_layers and all(n.startswith(aux) for n in q.never_run_layers)
        assert not any(isinstance(m, QuantLayer) for n, m in q.named_modules()
                       if n.startswith(aux))
    if arch == "googlenet":  # each inception module (4 branches, 6 convs) is one unit
        inception = [u for u in units if u.name.startswith("inception")]
        assert len(inception) == 9 and all(len(u.layers) == 6 for u in inception)
    if arch == "densenet":  # a dense block's concatenations keep every feature live
        assert [u.name for u in units] == ["features.conv0", "features.denseblock1",
            "features.transition1.conv", "features.denseblock2", "classifier"]
    if arch == "shufflenet_v2_x0_5":  # a stride-1 block: chunk, branch (3 convs), cat
        assert [len(u.layers) for u in units if u.name.startswith("stage2.")] == [5, 3, 3, 3]
    if arch == "lraspp":  # the dict output; size read from the input at the end is baked
        f = copy.deepcopy(build())
        fold_batchnorms(f)
        calibrate_activations(q, [x])
        data = build_unit_data(q, f, units[-1], [x])
        assert data.targets.shape == (2, 10, 8, 8)  # the head before the final interpolate


def test_efficientnet_residual_mbconv_blocks_are_one_unit_each():
    torch.manual_seed(0)
    q = quantize_model(_tv("efficientnet_b0"), QuantConfig(rounding="nearest"),
                       search_scales=False)
    x = torch.randn(2, 3, 32, 32)
    units = split_units(q, example=x)
    _check_cover(q, units, x)
    # B0's stages repeat 1, 2, 2, 3, 3, 4, 1 blocks; every block after a stage's first keeps
    # its channels and stride 1, so has the residual: 0+1+1+2+2+3+0 = 9 blocks, each one unit
    # of its 5 layers (expand, depthwise, SE fc1 and fc2, project)
    residual = [u for u in units if len(u.layers) == 5]
    assert len(residual) == 9
    assert [u.name for u in residual] == [
        "features.2.1", "features.3.1", "features.4.1", "features.4.2", "features.5.1",
        "features.5.2", "features.6.1", "features.6.2", "features.6.3"]
    # the other blocks are chains of units: (expand), depthwise, SE (2 layers), project
    se = [u for u in units if len(u.layers) == 2]
    assert len(se) == 7 and all(u.name.endswith(".block.1") or u.name.endswith(".block.2")
                                for u in se)


def test_block_sequencer_reconstructs_graph_units_end_to_end():
    import lightning.pytorch as pl

    from attnround_pl.calib import ReconConfig
    from attnround_pl.calib.sequencer import BlockSequencer

    torch.manual_seed(0)
    net = UserNet().eval()
    x = torch.randn(16, 3, 8, 8)
    q = quantize_model(net, QuantConfig(w_bits=3, a_bits=4, rounding="attention"))
    calibrate_activations(q, [x])
    f = copy.deepcopy(net)
    fold_batchnorms(f)
    units = split_units(q, example=x[:2])

    def make_trainer(callback):
        return pl.Trainer(accelerator="cpu", max_steps=3, max_epochs=1, logger=False,
                          callbacks=[callback], enable_checkpointing=False,
                          limit_val_batches=0, num_sanity_val_steps=0,
                          enable_model_summary=False, enable_progress_bar=False,
                          use_distributed_sampler=False, log_every_n_steps=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on workers and eval modules
        results = BlockSequencer(q, f, units, [x[:8], x[8:]], ReconConfig(iters=3, batch_size=4),
                                 make_trainer).run()
    assert [r.name for r in results] == [u.name for u in units]
    assert all(r.learned and r.mse_final >= 0 for r in results)
    assert all(m.weight_quantizer.rounding is None for m in quant_layers(q).values())  # frozen
    assert all(not m.training for m in q.modules())  # the model is left in eval mode
    with torch.no_grad():
        assert q(x).shape == (16, 10)
