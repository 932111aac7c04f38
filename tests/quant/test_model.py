import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from attnround_pl.quant import (
    QuantConfig,
    QuantConfigError,
    QuantConv2d,
    QuantLinear,
    as_frozen,
    calibrate_activations,
    freeze_model,
    quant_layers,
    quantize_model,
    set_learning,
)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def _resnet_block():
    torch.manual_seed(0)
    block = BasicBlock(
        16,
        32,
        stride=2,
        downsample=nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32)),
    )
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return block.eval()


def test_swaps_every_layer_and_keeps_original():
    model = _net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model(model, QuantConfig(w_bits=4, a_bits=4, rounding="nearest"))
    layers = quant_layers(q)
    assert list(layers) == ["0", "3", "8"]
    assert isinstance(layers["0"], QuantConv2d) and isinstance(layers["8"], QuantLinear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[1], nn.BatchNorm2d)


def test_first_and_last_layer_bits_default_8_and_configurable():
    q = quantize_model(_net(), QuantConfig(w_bits=3, a_bits=4))
    layers = quant_layers(q)
    assert [m.weight_quantizer.bits for m in layers.values()] == [8, 3, 8]
    assert [m.input_quantizer.bits for m in layers.values()] == [8, 4, 8]
    q = quantize_model(
        _net(),
        QuantConfig(
            w_bits=3, a_bits=4, first_layer_w_bits=6, last_layer_w_bits=5, last_layer_a_bits=32
        ),
    )
    layers = quant_layers(q)
    assert [m.weight_quantizer.bits for m in layers.values()] == [6, 3, 5]
    assert [m.input_quantizer.bits for m in layers.values()] == [8, 4, 32]


@pytest.mark.parametrize(("p", "bound"), [(2.0, 0.01), (2.4, 0.011)])
def test_8bit_resnet_block_within_1_percent(p, bound):
    # the MSE range search (p = 2) within 1 %; the default Lp search (p = 2.4) clips less and
    # pays a little squared error for it
    block = _resnet_block()
    x = torch.randn(16, 16, 14, 14)
    q = quantize_model(block, QuantConfig(w_bits=8, a_bits=8, rounding="nearest",
                                          scale_search_p=p))
    calibrate_activations(q, [x[:8], x[8:]])
    with torch.no_grad():
        rel = ((q(x) - block(x)).norm() / block(x).norm()).item()
    assert rel < bound


def test_lower_bits_more_error():
    block = _resnet_block()
    x = torch.randn(16, 16, 14, 14)
    errs = []
    for bits in (8, 4, 2):
        q = quantize_model(
            block,
            QuantConfig(
                w_bits=bits,
                a_bits=bits,
                rounding="nearest",
                first_layer_w_bits=bits,
                first_layer_a_bits=bits,
                last_layer_w_bits=bits,
                last_layer_a_bits=bits,
            ),
        )
        calibrate_activations(q, [x])
        with torch.no_grad():
            errs.append(((q(x) - block(x)).norm() / block(x).norm()).item())
    assert errs[0] < errs[1] < errs[2]


def test_freeze_model_keeps_outputs():
    model = _net()
    x = torch.randn(4, 3, 8, 8)
    q = quantize_model(model, QuantConfig(rounding="attention", rounding_args={"tau": 0.5}))
    calibrate_activations(q, [x])
    with torch.no_grad():
        before = q(x)
        freeze_model(q)
        after = q(x)
    assert torch.equal(before, after)
    assert all(m.weight_quantizer.frozen for m in quant_layers(q).values())


@pytest.mark.parametrize("rounding", ["adaround", "attention"])
def test_as_frozen_computes_what_freezing_keeps_and_learning_goes_on_after(rounding):
    model = _net()
    x = torch.randn(4, 3, 8, 8)
    q = quantize_model(model, QuantConfig(w_bits=2, a_bits=4, rounding=rounding,
                                          drop={"prob": 0.5}))
    calibrate_activations(q, [x])
    set_learning(q, 4)  # QDrop's dropping on, as inside a reconstruction
    with torch.no_grad():
        for layer in quant_layers(q).values():  # learned offsets off the initial state
            for p in layer.weight_quantizer.rounding.parameters():
                p.add_(torch.randn_like(p) * 0.4)
        twin = copy.deepcopy(q)
        learning = [q(x)]
        with as_frozen(q):
            frozen_view = [q(x), q(x)]
        learning.append(q(x))
        # after the block, dropping and the soft rounding are back, and the dropping's draws
        # go on as if the block had not been there
        assert torch.equal(learning[0], twin(x)) and torch.equal(learning[1], twin(x))
        assert not torch.equal(learning[0], learning[1])
        set_learning(q, None)
        plain = q(x)  # no dropping, the rounding's own forward
        freeze_model(q)
        frozen = q(x)
    assert torch.equal(frozen_view[0], frozen) and torch.equal(frozen_view[1], frozen)
    # Attention Round's forward is its hard value; AdaRound's soft value is not what it freezes to
    assert torch.equal(plain, frozen) == (rounding == "attention")


def test_seed_reproducible_and_layers_differ():
    a = quant_layers(quantize_model(_net(), QuantConfig(rounding="attention", seed=1)))
    b = quant_layers(quantize_model(_net(), QuantConfig(rounding="attention", seed=1)))
    c = quant_layers(quantize_model(_net(), QuantConfig(rounding="attention", seed=2)))
    alpha = {k: v.weight_quantizer.rounding.alpha for k, v in a.items()}
    assert all(torch.equal(alpha[k], b[k].weight_quantizer.rounding.alpha) for k in a)
    assert not torch.equal(alpha["3"], c["3"].weight_quantizer.rounding.alpha)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (QuantConfig(w_bits=9), r"w_bits=9 is outside 2\.\.8"),
        (QuantConfig(a_bits=1), r"a_bits=1 is outside 2\.\.8"),
        (QuantConfig(last_layer_w_bits=16), r"last_layer_w_bits=16"),
        (QuantConfig(rounding="adaroundd"), r"unknown rounding 'adaroundd'; valid names: adaround"),
        (QuantConfig(rounding_args={"tau": -1.0}), r"quant\.rounding_args\.tau=-1.0 must be >= 0"),
        (QuantConfig(rounding="adaround", rounding_args={"tau": 0.5}),
         r"quant\.rounding_args: rounding 'adaround' has no setting 'tau'; valid keys: "
         r"reg_weight, beta_start, beta_end, warmup \(tau is attention's"),
        (QuantConfig(rounding="nearest", rounding_args={"tau": 0.5}),
         r"rounding 'nearest' has no setting 'tau'; it takes none"),
        (QuantConfig(rounding="adaround", rounding_args={"warmup": 1.0}),
         r"quant\.rounding_args\.warmup=1.0 must be in \[0, 1\)"),
        (QuantConfig(rounding_args={"tau": "abc"}),
         r"quant\.rounding_args\.tau=abc must be a number"),
        (QuantConfig(drop={"prob": 1.0}), r"quant\.drop\.prob=1.0 must be in \[0, 1\)"),
    ],
)
def test_bad_config_clear_error_nothing_swapped(config, message):
    model = _net()
    with pytest.raises(QuantConfigError, match=message):
        quantize_model(model, config)
    assert not quant_layers(model)
    assert isinstance(model[1], nn.BatchNorm2d)


def test_model_without_layers():
    with pytest.raises(QuantConfigError, match="model Sequential has no Conv2d or Linear"):
        quantize_model(nn.Sequential(nn.ReLU(), nn.Flatten()))


def test_nan_weights_named():
    model = _net()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(QuantConfigError, match="weights of layer '3' contain NaN"):
        quantize_model(model)
    assert not quant_layers(model)


def test_quant_package_does_not_import_lightning():
    code = (
        "import sys, attnround_pl.quant; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rounding_args_reach_every_layer_and_read_numbers_from_strings():
    config = QuantConfig(rounding="adaround", rounding_args={"beta_start": "1e1", "warmup": 0})
    settings = config.validate().rounding_settings()
    assert settings.beta_start == 10.0 and isinstance(settings.warmup, float)
    q = quantize_model(_net(), config)
    roundings = [m.weight_quantizer.rounding for m in quant_layers(q).values()]
    assert all(r.beta_start == 10.0 and r.warmup == 0.0 and r.reg_weight == 0.01
               for r in roundings)
    q = quantize_model(_net(), QuantConfig(rounding_args={"tau": 0}))
    assert all(m.weight_quantizer.rounding.tau == 0.0 for m in quant_layers(q).values())


def test_explicit_layer_bits_win_over_the_config_and_first_last_keep_theirs():
    names = list(quant_layers(quantize_model(_net(), QuantConfig())))
    given = {name: 5 for name in names}
    q = quantize_model(_net(), QuantConfig(layer_w_bits={names[1]: 3}), layer_w_bits=given)
    bits = [m.weight_quantizer.bits for m in quant_layers(q).values()]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {5}
    with pytest.raises(QuantConfigError, match="layer_w_bits"):
        quantize_model(_net(), QuantConfig(), layer_w_bits={names[1]: 9})
