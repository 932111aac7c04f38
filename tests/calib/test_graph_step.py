import copy

import lightning.pytorch as pl
import pytest
import torch
from unit_fixture import trained_unit

from attnround_pl.calib import BlockReconstruction, unit_mse
from attnround_pl.calib.cache import UnitData
from attnround_pl.calib.graph_step import GraphedStep
from attnround_pl.quant import (
    QuantConfig,
    quantize_model,
    reconstruction_loss,
    round_to_nearest,
    set_learning,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _unit(fmnist_root, unit="layer3.2", n=128):
    return trained_unit(fmnist_root, QuantConfig(), unit, n)


def test_graphed_step_refuses_what_it_cannot_record():
    layer = torch.nn.Linear(2, 2)
    plain = torch.optim.Adam(layer.parameters())
    with pytest.raises(ValueError, match="capturable=True"):
        GraphedStep(layer, plain)
    step = GraphedStep(layer, torch.optim.Adam(layer.parameters(), capturable=True))
    assert step.params == list(layer.parameters())  # the optimizer's parameters
    with pytest.raises(RuntimeError, match="needs the unit on a CUDA device, not cpu"):
        step(torch.zeros(1, 2), torch.zeros(1, 2))


def _tiny(**quant):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    return quantize_model(net, QuantConfig(**quant)), UnitData(
        torch.zeros(4, 1, 8, 8), torch.zeros(4, 2, 4, 4)
    )


def test_cuda_graph_refuses_adaround_dropping_schedules_and_compile():
    unit, data = _tiny()
    with pytest.raises(ValueError, match="constant learning rate, not 'cosine'"):
        BlockReconstruction(unit, data, "u", lr_schedule="cosine", cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph and compile are exclusive"):
        BlockReconstruction(unit, data, "u", compile="default", cuda_graph=True)
    with pytest.raises(ValueError, match="cannot run AdaRound"):
        BlockReconstruction(*_tiny(rounding="adaround"), "u", cuda_graph=True)
    with pytest.raises(ValueError, match="cannot run rounding_args.tau_end"):
        BlockReconstruction(*_tiny(rounding_args={"tau_end": 0.1}), "u", cuda_graph=True)
    with pytest.raises(ValueError, match="QDrop's dropping"):
        BlockReconstruction(*_tiny(drop={"prob": 0.5}), "u", cuda_graph=True)
    module = BlockReconstruction(unit, data, "u", cuda_graph=True)
    assert not module.automatic_optimization
    with pytest.raises(RuntimeError, match="needs the unit on a CUDA device; the Trainer put it"):
        module.configure_optimizers()  # the module is on the CPU


def _eager_losses(unit, data, steps):
    module = BlockReconstruction(unit, data, "u")
    opt = module.configure_optimizers()
    set_learning(unit, 64)
    x, y = data.inputs[:64], data.targets[:64]
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = reconstruction_loss(unit(x), y)
        loss.backward()
        opt.step()  # eq. 6 first: the optimizer's pre-hook
        losses.append(float(loss.detach()))
    set_learning(unit, None)
    return losses


@needs_cuda
def test_graphed_step_learns_what_the_eager_step_learns(fmnist_root):
    unit, data = _unit(fmnist_root)
    unit.cuda()
    data = type(data)(data.inputs.cuda(), data.targets.cuda())
    twin = copy.deepcopy(unit)
    eager = _eager_losses(unit, data, 8)
    module = BlockReconstruction(twin, data, "u", cuda_graph=True).cuda()
    graphed = GraphedStep(twin, module.configure_optimizers())
    rounding, steps = module.learnable()
    assert graphed.params == rounding + steps
    set_learning(twin, 64)
    x, y = data.inputs[:64], data.targets[:64]
    replayed = [float(graphed(x, y)[0]) for _ in range(8)]
    assert replayed == pytest.approx(eager, rel=1e-4) and eager[-1] < eager[0]
    for a, b in zip(unit.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_cuda
def test_cuda_graph_fit_through_lightning_improves_the_unit(fmnist_root):
    unit, data = _unit(fmnist_root, n=256)
    with round_to_nearest(unit):
        nearest = unit_mse(unit, data)
    module = BlockReconstruction(unit, data, "u", iters=300, batch_size=64, cuda_graph=True)
    seen = []
    original = module.log
    module.log = lambda name, value, **kw: (seen.append(float(value)), original(name, value, **kw))
    trainer = pl.Trainer(max_steps=300, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="gpu", devices=1, log_every_n_steps=50)
    trainer.fit(module)
    assert module._graphed is None  # released after the fit
    assert len(seen) == 6 and all(v > 0 for v in seen)  # steps 50, 100, ..., 300
    unit.eval()
    assert unit_mse(unit, data) < 0.95 * nearest
