import pytest
import torch
from torch import nn

from attnround_pl.mixed import MixedConfig
from attnround_pl.mixed.allocation import MixedPrecisionError, allocate_model, size_mb
from attnround_pl.mixed.report import mixed_report, mixed_table
from attnround_pl.mixed.sensitivity import layer_errors, lower_bits_greedily
from attnround_pl.quant import QuantConfig


def test_greedy_lowers_the_cheapest_error_per_bit_first_and_fits_the_budget():
    params = {"a": 100, "b": 100, "c": 400}
    errors = {"a": {2: 9.0, 4: 1.0, 8: 0.0},  # costly to lower
              "b": {2: 0.5, 4: 0.1, 8: 0.0},  # cheap
              "c": {2: 4.0, 4: 0.2, 8: 0.0}}  # cheap per bit (large layer)
    assert lower_bits_greedily(params, errors, [2, 4, 8], 600 * 8) == {"a": 8, "b": 8, "c": 8}
    # 8 bits everywhere is 4800 bits; 3200 allows: c 8->4 (0.2 / 1600 bits) first
    assert lower_bits_greedily(params, errors, [2, 4, 8], 3200) == {"a": 8, "b": 8, "c": 4}
    # error per bit saved then: b 8->4 2.5e-4, a 8->4 2.5e-3, c 4->2 4.75e-3: b (2800 bits);
    # then b 4->2 2e-3 before a 2.5e-3 (2600); then a 8->4 (2200)
    assert lower_bits_greedily(params, errors, [2, 4, 8], 2400) == {"a": 4, "b": 2, "c": 4}
    assert lower_bits_greedily(params, errors, [2, 4, 8], 599) is None  # below all at 2 bits


def test_layer_errors_measure_each_layer_alone_and_leave_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    before = [p.clone() for p in model.parameters()]
    batches = [torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)]
    layers = [("0", model[0]), ("2", model[2])]
    errors = layer_errors(model, layers, [2, 4, 8], batches, QuantConfig(), images=12)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for name in ("0", "2"):
        assert errors[name][2] > errors[name][4] > errors[name][8] > 0  # fewer bits, more error
    # the value is the output MSE with that layer's weights quantized, nothing else
    from attnround_pl.quant.rounding import NearestRounding
    from attnround_pl.quant.weight_quant import WeightQuantizer

    x = torch.cat(batches)[:12]
    reference = model(x)
    w = model[2].weight.data
    model[2].weight.data = WeightQuantizer(w, 4, NearestRounding(),
                                           search_p=QuantConfig().scale_search_p)(w)
    expected = torch.mean((model(x) - reference) ** 2).item()
    model[2].weight.data = w
    assert errors["2"][4] == pytest.approx(expected, rel=1e-6)


def _net():
    torch.manual_seed(1)
    convs = [nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1) for i in range(5)]
    convs[2].weight.data.mul_(0.01)  # a layer the output barely depends on
    return nn.Sequential(*[m for c in convs for m in (c, nn.ReLU())], nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 4)).eval()


def test_sensitivity_allocation_fits_the_w4_size_and_reports_its_errors():
    model = _net()
    batches = [torch.randn(16, 1, 6, 6)]
    config = MixedConfig(bit_list=[3, 4, 5, 6], method="sensitivity", budget_bits=4)
    allocation = allocate_model(model, config, QuantConfig(), batches)
    params = [r.params for r in allocation.rows]
    w4 = size_mb(params, [8, 4, 4, 4, 4, 8])
    assert allocation.size_mb() <= w4 and allocation.budget_mb == pytest.approx(w4)
    assert [r.bits for r in allocation.rows][0] == 8 and allocation.rows[-1].bits == 8
    assert allocation.method == "sensitivity"
    free = [r for r in allocation.rows if not r.fixed]
    assert all(r.error is not None and r.error > 0 for r in free)
    assert len({r.bits for r in free}) > 1  # mixed, not uniform
    assert allocation.rows[2].bits == min(r.bits for r in free)  # the insensitive layer gives way
    report = mixed_report(allocation, config.bit_list, config.budget_bits)
    assert report.method == "sensitivity" and report.layers[2].output_error is not None
    assert "by sensitivity" in str(mixed_table(report).title)


def test_sensitivity_needs_a_budget_and_images_and_a_known_method():
    with pytest.raises(MixedPrecisionError, match=r"^mixed\.method=sensitivity needs a size "
                                                  r"limit \(mixed\.budget_bits or"):
        MixedConfig(bit_list=[3, 4], method="sensitivity").validate()
    with pytest.raises(MixedPrecisionError, match=r"^mixed\.method='hessian': one of "
                                                  r"coding_length, sensitivity$"):
        MixedConfig(bit_list=[3, 4], method="hessian").validate()
    config = MixedConfig(bit_list=[3, 4], method="sensitivity", budget_bits=4)
    with pytest.raises(MixedPrecisionError, match="calibration images: pass batches"):
        allocate_model(_net(), config, QuantConfig())
    tiny = MixedConfig(bit_list=[3, 4], method="sensitivity", budget_bits=2)
    with pytest.raises(MixedPrecisionError, match=r"budget_bits=2 \(.* MB\) cannot be met"):
        allocate_model(_net(), tiny, QuantConfig(), [torch.randn(4, 1, 6, 6)])
