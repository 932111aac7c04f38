import pytest
import torch
from torch import nn

from attnround_pl.mixed import MixedConfig
from attnround_pl.mixed.allocation import (
    MixedPrecisionError,
    allocate_bits,
    allocate_model,
    cluster_bits,
    cluster_maps,
    size_mb,
)
from attnround_pl.quant import QuantConfig, quant_layers, quantize_model


def _layers(scales, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, s in enumerate(scales):
        conv = nn.Conv2d(8, 8, 3, bias=False)
        conv.weight.data = torch.randn(8, 8, 3, 3, generator=gen) * s
        out.append((f"l{i}", conv))
    return out


def test_cluster_bits_sorted_centres_get_sorted_bits():
    assert cluster_bits([1.0, 50.0, 2.0, 100.0, 51.0, 99.0], [3, 4, 6]) == [3, 4, 3, 6, 4, 6]


def test_larger_variance_never_fewer_bits_and_deterministic():
    layers = _layers([0.01, 0.02, 0.5, 0.6, 3.0, 0.015, 2.5])
    cfg = MixedConfig(bit_list=[3, 4, 5], eps2=0.01)
    rows = allocate_bits(layers, cfg, fixed={}).rows
    by_name = {r.name: r for r in rows}
    ordered = sorted(rows, key=lambda r: r.length)
    assert [r.bits for r in ordered] == sorted(r.bits for r in rows)
    assert by_name["l4"].bits == 5 and by_name["l0"].bits == 3
    assert by_name["l4"].length > by_name["l2"].length > by_name["l0"].length
    again = allocate_bits(layers, cfg, fixed={}).rows
    assert [(r.name, r.bits, r.length) for r in again] == [(r.name, r.bits, r.length) for r in rows]


def test_fixed_layers_keep_their_bits():
    rows = allocate_bits(_layers([0.1, 1.0, 0.2, 3.0]), MixedConfig(bit_list=[2, 3]),
                         fixed={"l0": 8, "l3": 8}).rows
    assert [(r.name, r.bits, r.fixed) for r in rows if r.fixed] == [
        ("l0", 8, True),
        ("l3", 8, True),
    ]
    assert {r.bits for r in rows if not r.fixed} == {2, 3}


def test_size_arithmetic_exact_on_a_hand_made_model():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 1), nn.Flatten(),
                          nn.Linear(8, 2))
    params = [36, 32, 16]  # weights only: 4*1*3*3, 8*4*1*1, 2*8
    assert size_mb(params, [8, 3, 8]) == (36 * 8 + 32 * 3 + 16 * 8) / 8 / 2**20
    q = quantize_model(model, QuantConfig(w_bits=3))
    got = [(m.layer.weight.numel(), m.weight_quantizer.bits) for m in quant_layers(q).values()]
    assert got == [(36, 8), (32, 3), (16, 8)]


def test_budget_mode_fits_the_budget_and_uses_it():
    layers = _layers([0.01, 0.02, 0.5, 0.6, 3.0, 0.015, 2.5])
    params = [m.weight.numel() for _, m in layers]
    full = allocate_bits(layers, MixedConfig(bit_list=[3, 4, 5, 6]), fixed={})
    assert (full.eps2, full.budget_mb, full.cluster_bits) == (1e-3, None, [3, 4, 5, 6])
    full_size = full.size_mb()
    budget = (size_mb(params, [3] * 7) + full_size) / 2
    fit = allocate_bits(layers, MixedConfig(bit_list=[3, 4, 5, 6], budget_mb=budget), fixed={})
    size = size_mb(params, [r.bits for r in fit.rows])
    assert size == fit.size_mb() and fit.budget_mb == budget
    assert size <= budget
    assert size > size_mb(params, [3] * 7)
    assert fit.cluster_bits in cluster_maps([3, 4, 5, 6])
    # the recorded eps2 and cluster bits are the ones used: clustering at that eps2 and mapping
    # each cluster to its recorded bits gives the same allocation
    again = allocate_bits(layers, MixedConfig(bit_list=[3, 4, 5, 6], eps2=fit.eps2), fixed={})
    remap = [fit.cluster_bits[[3, 4, 5, 6].index(r.bits)] for r in again.rows]
    assert remap == [r.bits for r in fit.rows]
    with pytest.raises(MixedPrecisionError, match="cannot be met: the smallest allocation"):
        allocate_bits(layers, MixedConfig(bit_list=[3, 4], budget_mb=1e-6), fixed={})


def test_cluster_maps_cap_then_shift_and_keep_the_order():
    assert cluster_maps([3, 4, 5]) == [[3, 4, 5], [3, 4, 4], [3, 3, 3], [3, 3, 4], [3, 3, 3]]
    for bits in cluster_maps([2, 3, 5, 6, 8]):
        assert bits == sorted(bits)


def test_shifting_the_clusters_down_fills_a_budget_capping_cannot():
    # two wide layers in different clusters, six narrow ones: between the W3 and W4 sizes,
    # capping can only give uniform 3 bits (the wide layers' clusters are merged down together
    # with narrow ones), shifting gives the widest layer 4 bits and the rest 3
    gen = torch.Generator().manual_seed(0)
    layers = []
    for i, (c, scale) in enumerate([(8, 0.1)] * 6 + [(64, 0.1), (64, 1.0)]):
        conv = nn.Conv2d(c, c, 3, bias=False)
        conv.weight.data = torch.randn(c, c, 3, 3, generator=gen) * scale
        layers.append((f"l{i}", conv))
    params = [m.weight.numel() for _, m in layers]
    budget = (size_mb(params, [3] * 8) + size_mb(params, [4] * 8)) / 2
    fit = allocate_bits(layers, MixedConfig(bit_list=[3, 4, 5, 6], budget_mb=budget), fixed={})
    assert fit.size_mb() <= budget
    assert fit.size_mb() > size_mb(params, [3] * 8)
    assert fit.cluster_bits[0] == fit.cluster_bits[1] == 3 and fit.cluster_bits[-1] > 3
    assert [r.bits for r in fit.rows][-1] > 3


def test_budget_bits_is_the_single_precision_size_with_fixed_layers():
    layers = _layers([0.01, 0.02, 0.5, 0.6, 3.0, 0.015, 2.5, 0.3])
    params = [m.weight.numel() for _, m in layers]
    fixed = {"l0": 8, "l7": 8}
    w4 = size_mb(params, [8, 4, 4, 4, 4, 4, 4, 8])
    unlimited = allocate_bits(layers, MixedConfig(bit_list=[3, 4, 5, 6]), fixed)
    assert unlimited.size_mb() > w4  # without the budget this allocation is larger than W4
    fit = allocate_bits(layers, MixedConfig(bit_list=[3, 4, 5, 6], budget_bits=4), fixed)
    assert fit.budget_mb == pytest.approx(w4, rel=0, abs=0)
    assert fit.size_mb() <= w4
    assert [r.bits for r in fit.rows if r.fixed] == [8, 8]
    assert len({r.bits for r in fit.rows if not r.fixed}) > 1  # still mixed, not uniform 4 or 3
    by_mb = allocate_bits(layers, MixedConfig(bit_list=[3, 4, 5, 6], budget_mb=w4), fixed)
    assert [r.bits for r in by_mb.rows] == [r.bits for r in fit.rows]
    with pytest.raises(MixedPrecisionError, match=r"budget_bits=2 \(0\.\d+ MB\) cannot be met"):
        allocate_bits(layers, MixedConfig(bit_list=[3, 4], budget_bits=2), fixed)


@pytest.mark.parametrize(
    ("mixed", "message"),
    [
        ({"bit_list": []}, "bit_list is empty"),
        ({"bit_list": [4, 3]}, "must be strictly ascending"),
        ({"bit_list": [3, 9]}, r"every entry must be in 2\.\.8"),
        ({"bit_list": [3, 4], "eps2": 0.0}, "eps2=0.0 must be > 0"),
        ({"bit_list": [3, 4], "budget_mb": -1.0}, "budget_mb=-1.0 must be > 0"),
        ({"bit_list": [3, 4], "budget_bits": 9}, r"budget_bits=9 must be an integer in 2\.\.8"),
        ({"bit_list": [3, 4], "budget_bits": 4, "budget_mb": 0.1}, "both set: give one"),
    ],
)
def test_bad_settings(mixed, message):
    with pytest.raises(MixedPrecisionError, match=f"^mixed\\..*{message}"):
        MixedConfig(**mixed).validate()


def test_more_bit_widths_than_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1))
    with pytest.raises(MixedPrecisionError, match="4 bit widths for 1 layer"):
        allocate_model(model, MixedConfig(bit_list=[3, 4, 5, 6]), QuantConfig())


def test_allocation_before_quantization_first_last_win():
    model = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(6)])
    for i, conv in enumerate(model):
        conv.weight.data.mul_(1 + 3 * (i % 2))
    before = [conv.weight.clone() for conv in model]
    allocation = allocate_model(model, MixedConfig(bit_list=[3, 5]), QuantConfig(seed=3))
    assert all(torch.equal(a, conv.weight) for a, conv in zip(before, model, strict=True))
    q = quantize_model(model, QuantConfig(seed=3), layer_w_bits=allocation.layer_bits())
    bits = [m.weight_quantizer.bits for m in quant_layers(q).values()]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {3, 5}
    assert [r.bits for r in allocation.rows] == bits
    assert [r.name for r in allocation.rows] == list(quant_layers(q))


def test_allocation_measures_the_folded_weights_in_execution_order():
    class Net(nn.Module):  # registered b, a; run a, b: the first to run keeps 8 bits
        def __init__(self):
            super().__init__()
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.d = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.d(self.c(self.bn(self.b(self.a(x)))))

    net = Net().eval()
    net.bn.running_var.uniform_(0.1, 4.0)
    allocation = allocate_model(net, MixedConfig(bit_list=[3, 4]), QuantConfig())
    assert [r.name for r in allocation.rows] == ["a", "b", "c", "d"]
    assert [r.fixed for r in allocation.rows] == [True, False, False, True]
    from attnround_pl.mixed.coding_length import coding_length

    folded = coding_length(net.b.weight * (net.bn.weight / (net.bn.running_var + net.bn.eps)
                                           .sqrt()).reshape(-1, 1, 1, 1), 1e-3)
    assert allocation.rows[1].length == pytest.approx(folded, rel=1e-5)
