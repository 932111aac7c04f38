"""BRECQ's Fisher-weighted output error (``recon.loss fisher``): the weights of a unit, the
weighted loss, and a calibration that learns on them."""

import pytest
import torch
import torch.nn.functional as F
from float_pairs import resnet20_pair, small_cnn
from torch import nn

import attnround_pl
from attnround_pl.calib import ReconConfig, build_unit_data, capture
from attnround_pl.calib.fisher import fisher_weights, output_gradients
from attnround_pl.calib.memory import estimate_cache_bytes
from attnround_pl.errors import SettingError
from attnround_pl.models import split_units
from attnround_pl.quant import (
    QuantConfig,
    calibrate_activations,
    quant_layers,
    quantize_model,
    reconstruction_loss,
    round_to_nearest,
)
from attnround_pl.quant.model import act_quantizers

BATCH = 32  # the reconstruction's batch size, which scales g (BRECQ's batchmean)


def brecq_gradient(logits: torch.Tensor, float_logits: torch.Tensor, leaf: torch.Tensor):
    """BRECQ's save_grad_data on one batch of BATCH samples: g at ``leaf``."""
    divergence = F.kl_div(F.log_softmax(logits, 1), F.softmax(float_logits, 1),
                          reduction="batchmean")
    (g,) = torch.autograd.grad(divergence, leaf)
    return g


def test_the_weighted_error_weighs_each_element():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    weight = torch.rand(4, 3, 5, 5, generator=g) + 1.0
    for p in (2.0, 2.4):
        want = ((pred - target).abs().pow(p) * weight).sum(1).mean()
        assert torch.allclose(reconstruction_loss(pred, target, p, weight), want, rtol=1e-5)
        ones = torch.ones_like(pred)
        assert torch.allclose(reconstruction_loss(pred, target, p, ones),
                              reconstruction_loss(pred, target, p), rtol=1e-6)




def test_a_block_units_weights_are_brecqs_gradient_with_the_network_float_after_it():
    torch.manual_seed(0)
    x = torch.randn(BATCH, 1, 28, 28)
    q, f = resnet20_pair()
    calibrate_activations(q, [x])
    units = split_units(q)
    index = [u.name for u in units].index("layer3.2")  # the last block: then only fc is after
    enabled = {name: (layer.weight_enabled, layer.input_quantizer.enabled)
               for name, layer in quant_layers(q).items()}
    q.train()
    got = output_gradients(q, f, units, index, [x[:12], x[12:]], BATCH)
    # the block quantized at round-to-nearest; after it, the float model's head
    with round_to_nearest(q.layer3[2]):
        out = capture(q, "layer3.2", [x], "output").requires_grad_()
    with torch.no_grad():
        float_logits = f(x)
    want = brecq_gradient(f.fc(f.avgpool(out).flatten(1)), float_logits, out)
    assert got.shape == build_unit_data(q, f, units[index], [x]).targets.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-9)
    assert got.abs().max() > 1e-6  # the output reacts somewhere
    # the first unit, a layer whose output goes through an in-place ReLU: the whole network
    # after it is float
    got = output_gradients(q, f, units, 0, [x], BATCH)
    with round_to_nearest(q.conv1):
        out = capture(q, "conv1", [x], "output").requires_grad_()
    tail = f.fc(f.avgpool(f.layer3(f.layer2(f.layer1(f.relu(out.clone()))))).flatten(1))
    assert torch.allclose(got, brecq_gradient(tail, float_logits, out), rtol=1e-4, atol=1e-9)
    # every switch as it was, the model in its mode
    assert enabled == {name: (layer.weight_enabled, layer.input_quantizer.enabled)
                       for name, layer in quant_layers(q).items()}
    assert q.training
    q.eval()


def test_a_graph_units_weights_are_taken_at_its_region_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(36, 5)).eval()
    x = torch.randn(BATCH, 3, 9, 9)
    q = quantize_model(net, QuantConfig(w_bits=2, a_bits=4, rounding="attention"))
    calibrate_activations(q, [x])
    units = split_units(q, example=x[:2])
    assert [u.rule for u in units] == ["graph"] * 4 and units[1].layers == ["2"]
    got = output_gradients(q, net, units, 1, [x], BATCH)
    with torch.no_grad(), round_to_nearest(q[2]):
        cut = q[2](q[1](q[0](x)))  # the cut after conv 2, before its ReLU
    cut.requires_grad_()
    tail = net[6](net[5](net[4](net[3](cut))))  # after the unit: float
    with torch.no_grad():
        float_logits = net(x)
    assert torch.allclose(got, brecq_gradient(tail, float_logits, cut), rtol=1e-4, atol=1e-9)


def test_the_two_forms_of_the_weights():
    g = torch.tensor([[0.0, -2.0], [1.0, 1.0]])
    assert torch.equal(fisher_weights(g.clone(), "fisher_damped"),
                       torch.tensor([[1.0, 9.0], [4.0, 4.0]]))
    # g^2 = 0, 4, 1, 1: mean 1.5
    assert torch.allclose(fisher_weights(g.clone(), "fisher"),
                          torch.tensor([[0.0, 4.0], [1.0, 1.0]]) / 1.5)
    assert torch.equal(fisher_weights(torch.zeros(2, 3), "fisher"), torch.ones(2, 3))
    with pytest.raises(ValueError, match="form='mse'"):
        fisher_weights(g, "mse")


def test_the_cache_estimate_counts_the_weights():
    x = torch.randn(4, 1, 28, 28)
    q, f = resnet20_pair()
    calibrate_activations(q, [x])
    unit = split_units(q)[2]
    plain = estimate_cache_bytes(q, f, unit, [x])
    targets = build_unit_data(q, f, unit, [x]).targets
    assert estimate_cache_bytes(q, f, unit, [x], fisher=True) == (
        plain + 2 * targets.element_size() * targets.numel()
    )




def test_a_calibration_learns_on_the_weighted_error():
    images = torch.randn(32, 3, 10, 10, generator=torch.Generator().manual_seed(1))

    def run(loss: str):
        recon = ReconConfig(iters=30, batch_size=8, lr=0.05, keep_better=False, loss=loss)
        return attnround_pl.quantize(small_cnn(), images, quant=QuantConfig(w_bits=2, a_bits=4),
                                     recon=recon, progress=False, trainer={"accelerator": "cpu"})

    plain, weighted = run("mse"), run("fisher")
    assert weighted.report.recon["loss"] == "fisher"
    # the cache holds the weights as well: as large again as the targets
    pairs = list(zip(plain.report.units, weighted.report.units, strict=True))
    assert all(w.cache_mb >= p.cache_mb for p, w in pairs)
    assert pairs[0][1].cache_mb > pairs[0][0].cache_mb  # the first conv's: visible in MB
    # the weights change what is learned: the later layers' activation steps end elsewhere
    steps = [[q.step.item() for q in act_quantizers(m)] for m in (plain, weighted)]
    assert all(a != b for a, b in zip(steps[0][1:], steps[1][1:], strict=True))


def test_an_unknown_loss_and_fisher_with_a_cuda_graph_are_refused():
    with pytest.raises(SettingError, match="recon.loss='l1': use one of mse, fisher, fisher_d"):
        ReconConfig(loss="l1").validate()
    with pytest.raises(SettingError, match="recon.cuda_graph records the plain squared error"):
        ReconConfig(loss="fisher_damped", cuda_graph=True).validate()
