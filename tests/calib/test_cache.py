import pytest
import torch
from torch import nn

from attnround_pl.calib import build_unit_data, capture
from attnround_pl.calib.cache import cache_device
from attnround_pl.models import build_model
from attnround_pl.quant import QuantConfig, calibrate_activations, fold_batchnorms, quantize_model


def test_capture_stops_at_the_unit_and_matches_a_full_pass():
    model = build_model("resnet20", weights=None)
    x = torch.randn(6, 1, 28, 28)
    calls = []
    model.layer3.register_forward_hook(lambda m, a, o: calls.append(1))
    got = capture(model, "layer2.1", [x[:4], x[4:]], "output")
    assert calls == []  # the forward stopped at layer2.1
    with torch.no_grad():
        ref = model.layer2[:2](model.layer1(model.relu(model.bn1(model.conv1(x)))))
    assert torch.allclose(got, ref, atol=1e-5)
    inp = capture(model, "fc", [x], "input")
    assert inp.shape == (6, 64)


def test_unit_data_inputs_from_quantized_targets_from_float():
    model = build_model("resnet20", weights=None)
    x = torch.randn(8, 1, 28, 28)
    q = quantize_model(model, QuantConfig(w_bits=2, a_bits=2, rounding="nearest"))
    calibrate_activations(q, [x])
    f = build_model("resnet20", weights=None)
    f.load_state_dict(model.state_dict())
    fold_batchnorms(f)
    data = build_unit_data(q, f, "layer2.0", [x])
    assert data.inputs.shape == (8, 16, 14, 14) and data.targets.shape == (8, 32, 7, 7)
    assert data.nbytes == 4 * (8 * 16 * 14 * 14 + 8 * 32 * 7 * 7)
    both = build_unit_data(q, f, "layer2.0", [x], float_inputs=True, inputs_from_float=True)
    assert both.inputs is both.float_inputs  # one capture, counted once
    assert both.nbytes == data.nbytes
    float_in = capture(f, "layer2.0", [x], "input")
    assert not torch.allclose(data.inputs, float_in)  # quantized upstream differs from float
    with torch.no_grad():
        assert torch.allclose(f.layer2[0](float_in), data.targets, atol=1e-5)
    assert isinstance(f.bn1, nn.Identity)


def test_cache_device_is_the_host_without_an_accelerator():
    assert cache_device(1, torch.device("cpu")) == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cache_device_takes_the_gpu_while_the_cache_fits_in_half_its_free_memory():
    gpu = torch.device("cuda", 0)
    assert cache_device(2**20, gpu) == "cuda:0"
    free, _ = torch.cuda.mem_get_info(gpu)
    assert cache_device(free, gpu) == "cpu"


def test_graph_unit_capture_runs_only_the_prefix_it_needs():
    from attnround_pl.models import split_units

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(4, 3, 9, 9)
    q = quantize_model(net, QuantConfig(rounding="nearest"))
    calibrate_activations(q, [x])
    units = split_units(q, example=x[:2])
    assert [u.layers for u in units] == [["0"], ["2"], ["4"]]
    calls = []
    q[4].register_forward_hook(lambda m, a, o: calls.append("q"))
    net[4].register_forward_hook(lambda m, a, o: calls.append("f"))
    data = build_unit_data(q, net, units[1], [x[:2], x[2:]])
    assert calls == []  # neither model ran past the unit
    with torch.no_grad():
        assert torch.equal(data.inputs, q[0](x))  # the cut after conv 0, before its ReLU
        assert torch.allclose(data.targets, net[2](net[1](net[0](x))))
