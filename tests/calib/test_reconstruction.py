import copy
import math
import os

import lightning.pytorch as pl
import pytest
import torch
from unit_fixture import trained_unit

from attnround_pl.calib import BlockReconstruction, ReconConfig, unit_mse
from attnround_pl.calib.cache import UnitData
from attnround_pl.calib.reconstruction import (
    NVML_CHECK,
    STEPS_PER_BATCH,
    ShardBatches,
    StepBatches,
    adam_options,
    use_runtime_cuda_check,
)
from attnround_pl.calib.step import optimizer_step
from attnround_pl.errors import SettingError
from attnround_pl.quant import (
    QuantConfig,
    round_to_nearest,
    set_progress,
    shape_gradients_before_step,
)


def _trainer(steps):
    return pl.Trainer(max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1)


def _unit_setup(fmnist_root, rounding, unit="layer2.0", w_bits=4, a_bits=4, n=256):
    config = QuantConfig(w_bits=w_bits, a_bits=a_bits, rounding=rounding)
    return trained_unit(fmnist_root, config, unit, n)


def test_attention_round_beats_nearest_on_a_trained_block(fmnist_root):
    unit, data = _unit_setup(fmnist_root, "attention")
    with round_to_nearest(unit):
        nearest = unit_mse(unit, data)
    module = BlockReconstruction(unit, data, "layer2.0", iters=400, batch_size=64, seed=0)
    _trainer(400).fit(module)
    unit.eval()
    learned = unit_mse(unit, data)
    assert learned < 0.9 * nearest, (learned, nearest)


def test_adaround_regulariser_enters_the_loss(fmnist_root):
    unit, data = _unit_setup(fmnist_root, "adaround", unit="layer3.2", n=64)
    module = BlockReconstruction(unit, data, "layer3.2", iters=10, batch_size=16)
    rounding, steps = module.learnable()
    # V of two convs; two input steps, each with AQuant's border (k and c per channel)
    assert len(rounding) == 2 and len(steps) == 6
    set_progress(unit, 0.0)  # warm-up, no regulariser
    x, y = data.inputs[:16], data.targets[:16]
    warm = sum(module.step_losses(x, y))
    set_progress(unit, 0.5)
    rec, reg = module.step_losses(x, y)
    assert rec + reg > warm + 1.0 and reg.requires_grad  # lambda * sum over >10k weights


def test_optimizer_holds_only_rounding_and_steps(fmnist_root):
    unit, data = _unit_setup(fmnist_root, "attention", unit="fc", n=64)
    module = BlockReconstruction(unit, data, "fc", lr=4e-4, act_lr=1e-5)
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [4e-4, 1e-5]
    params = [p for g in opt.param_groups for p in g["params"]]
    # alpha; the input step and AQuant's border, the default with a learning rounding
    assert [tuple(p.shape) for p in params] == [(10, 64), (), (64,), (64,)]
    assert not any(p is unit.layer.weight for p in params)
    batches = list(module.train_dataloader())  # one process: STEPS_PER_BATCH steps a batch
    assert len(batches) == module.iters // STEPS_PER_BATCH and len(batches[0]) == STEPS_PER_BATCH
    assert batches[0][0].shape == (64,)  # a step's sample indices, gathered at the step
    assert module._steps.gather(batches[0][0])[0].shape == (64, 64)


def test_qdrop_drops_only_while_the_unit_learns(fmnist_root):
    unit, data = trained_unit(fmnist_root, QuantConfig(drop={"prob": 0.5}), "layer3.0", n=64)
    quantizers = [m for m in unit.modules() if hasattr(m, "dropping")]
    seen = []
    module = BlockReconstruction(unit, data, "layer3.0", iters=3, batch_size=16)
    original = module.reconstruction_step

    def spy(x, y, step, *rest):
        seen.append(all(q.dropping for q in quantizers))
        return original(x, y, step, *rest)

    module.reconstruction_step = spy
    _trainer(3).fit(module)
    assert seen == [True, True, True] and quantizers
    assert not any(q.dropping for q in quantizers)


def _learn_with(fmnist_root, options):
    unit, data = _unit_setup(fmnist_root, "attention", unit="layer3.2", n=64)
    module = BlockReconstruction(unit, data, "layer3.2", iters=30, batch_size=16)
    opt = module.configure_optimizers()
    assert opt.defaults["fused"] is True  # on the CPU
    if options != adam_options(torch.device("cpu")):
        opt = torch.optim.Adam(opt.param_groups, **options)
        shape_gradients_before_step(opt, unit)
    params = [p for group in module.learnable() for p in group]
    start = [p.detach().clone() for p in params]
    module.on_fit_start()
    for chunk in module.train_dataloader():
        for index in chunk:
            x, y, *_ = module._steps.gather(index)
            optimizer_step(module.step_losses, opt, x, y)
    return start, [p.detach().clone() for p in params]


def test_fused_adam_learns_what_the_foreach_and_per_tensor_adam_learn(fmnist_root):
    start, fused = _learn_with(fmnist_root, {"fused": True})
    _, foreach = _learn_with(fmnist_root, {"foreach": True})
    _, loop = _learn_with(fmnist_root, {"foreach": False})
    assert len(fused) == 8  # two alphas, two activation steps, their borders (k, c)
    # every tensor learned something
    assert all(not torch.equal(a, b) for a, b in zip(start, fused, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(foreach, loop, strict=True))
    # the fused kernel rounds differently in the last bit: the same run to float rounding
    for a, b in zip(fused, foreach, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_runtime_cuda_check_only_without_a_cuda_device(monkeypatch):
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    use_runtime_cuda_check()
    assert os.environ[NVML_CHECK] == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    use_runtime_cuda_check()
    assert NVML_CHECK not in os.environ


def test_cosine_schedule_decays_both_learning_rates_to_zero(fmnist_root):
    unit, data = _unit_setup(fmnist_root, "attention", unit="fc", n=64)
    module = BlockReconstruction(unit, data, "fc", iters=10, batch_size=16, lr=4e-4,
                                 act_lr=1e-5, lr_schedule="cosine")
    seen = []
    original = module.reconstruction_step

    def spy(x, y, step, *rest):
        seen.append([g["lr"] for g in module.trainer.optimizers[0].param_groups])
        return original(x, y, step, *rest)

    module.reconstruction_step = spy
    _trainer(10).fit(module)
    for k, lrs in enumerate(seen):
        factor = (1 + math.cos(math.pi * k / 10)) / 2
        assert lrs == pytest.approx([4e-4 * factor, 1e-5 * factor], rel=1e-9), k
    assert len(seen) == 10 and seen[-1][0] < 0.03 * 4e-4
    module = BlockReconstruction(unit, data, "fc", iters=10, batch_size=16, lr=4e-4,
                                 act_lr=1e-5, lr_schedule="cosine_act")
    seen.clear()
    original = module.reconstruction_step
    module.reconstruction_step = spy
    _trainer(10).fit(module)
    for k, lrs in enumerate(seen):
        factor = (1 + math.cos(math.pi * k / 10)) / 2
        assert lrs == pytest.approx([4e-4, 1e-5 * factor], rel=1e-9), k
    plain = BlockReconstruction(unit, data, "fc").configure_optimizers()
    assert isinstance(plain, torch.optim.Adam)  # constant: no scheduler at all
    with pytest.raises(
        SettingError, match="recon.lr_schedule='linear': use one of constant, cosine, cosine_act"
    ):
        ReconConfig(lr_schedule="linear").validate()


def test_step_batches_gather_each_steps_indices_in_order():
    """Step k of the DataLoader is ShardBatches' k-th index list (a rank's part may be empty),
    sliced from one index tensor on the cache's device; gathering it gives the cache at those
    indices, written into the same tensors for every step of a size."""
    data = UnitData(torch.arange(20.0).view(10, 2), -torch.arange(10.0), torch.arange(10.0))
    for rank in (0, 1):
        lists = list(ShardBatches(20, 30, 3, seed=5, rank=rank, world=2))
        assert any(len(b) == 0 for b in lists)  # a step with none of this rank's samples
        batches = StepBatches(data, lists)
        steps = list(torch.utils.data.DataLoader(batches, batch_size=None))
        assert len(steps) == 30 and all(len(chunk) == 1 for chunk in steps)
        for [index], idx in zip(steps, lists, strict=True):
            assert index.tolist() == idx
            x, y, x_float, *_ = batches.gather(index)
            assert torch.equal(x, data.inputs[idx]) and torch.equal(y, data.targets[idx])
            assert torch.equal(x_float, data.float_inputs[idx])
        chunks = list(torch.utils.data.DataLoader(StepBatches(data, lists, 4), batch_size=None))
        assert [len(chunk) for chunk in chunks] == [4] * 7 + [2]  # 30 steps, 4 a batch
        assert [i.tolist() for chunk in chunks for i in chunk] == lists
    sized = [index for [index] in steps if len(index) == 2]
    first = batches.gather(sized[0])
    assert all(a is b for a, b in zip(batches.gather(sized[1]), first, strict=True))
    assert torch.equal(first[0], data.inputs[sized[1]])  # the same tensors, the new samples


def _fit_losses(unit, data, compile, steps=6):
    module = BlockReconstruction(unit, data, "layer3.2", iters=steps, batch_size=16,
                                 compile=compile)
    losses, forwards = [], []
    original = module.reconstruction_step

    def spy(x, y, step, *rest):
        forwards.append(module._unit_forward)
        rec, reg = original(x, y, step, *rest)
        losses.append(float(rec.detach()))
        return rec, reg

    module.reconstruction_step = spy
    _trainer(steps).fit(module)
    steps_learned = [float(q.step.detach()) for q in unit.modules() if hasattr(q, "lsq_batch")]
    return losses, steps_learned, forwards, module


def test_compiled_unit_learns_what_the_eager_one_learns(fmnist_root):
    unit, data = _unit_setup(fmnist_root, "attention", unit="layer3.2", n=64)
    twin = copy.deepcopy(unit)
    eager, eager_steps, eager_fwd, plain = _fit_losses(unit, data, "off")
    compiled, compiled_steps, compiled_fwd, module = _fit_losses(twin, data, "default")
    assert all(f == plain.unit.forward for f in eager_fwd)
    # the fit ran the compiled forward, and the module went back to eager after it
    assert all(f != module.unit.forward for f in compiled_fwd)
    assert module._unit_forward == module.unit.forward
    assert len(eager) == len(compiled) == 6 and len(set(eager)) == 6
    # fused kernels round differently in the last bits; nothing more
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert compiled_steps == pytest.approx(eager_steps, rel=1e-4) and len(eager_steps) == 2


def test_compile_settings_are_checked(tmp_path):
    with pytest.raises(SettingError, match="recon.compile='fast': use one of off, default"):
        ReconConfig(compile="fast").validate()
    with pytest.raises(ValueError, match="compile='fast'"):
        BlockReconstruction(torch.nn.Linear(2, 2), UnitData(torch.zeros(1, 2), torch.zeros(1, 2)),
                            "fc", compile="fast")


def _fit_state(unit, data, monkeypatch, own_steps, rounding_calls):
    """A 23-step fit (not a multiple of STEPS_PER_BATCH) of ``unit``; returns its learned
    tensors. ``own_steps=False``: one step a batch through Lightning's optimizer wrapper and
    ``manual_backward``, the path DDP and other precisions take."""
    if not own_steps:
        monkeypatch.setattr(BlockReconstruction, "own_steps", lambda self: False)
    module = BlockReconstruction(unit, data, "layer3.2", iters=23, batch_size=16,
                                 lr_schedule="cosine")
    batches = []
    original = module.training_step

    def spy(batch, batch_idx):
        batches.append(len(batch))
        return original(batch, batch_idx)

    module.training_step = spy
    _trainer(23).fit(module)
    monkeypatch.undo()
    calls = list(rounding_calls)
    rounding_calls.clear()
    return [p.detach().clone() for g in module.learnable() for p in g], batches, calls


def test_steps_in_one_batch_learn_exactly_what_one_step_a_batch_learns(fmnist_root,
                                                                      monkeypatch):
    """Several steps a Lightning batch (one process) and Lightning's optimizer wrapper, one
    step a batch, run the same 23 steps bit for bit, and eq. 6 runs exactly once a step on
    each rounding (the optimizer's pre-hook), in both."""
    from attnround_pl.quant import AttentionRounding

    unit, data = _unit_setup(fmnist_root, "attention", unit="layer3.2", n=64)
    twin = copy.deepcopy(unit)
    calls = []
    finish = AttentionRounding.finish_gradients.__func__

    def counted(cls, roundings):
        calls.extend(id(r) for r in roundings)
        return finish(cls, roundings)

    monkeypatch.setattr(AttentionRounding, "finish_gradients", classmethod(counted))
    own, own_batches, own_calls = _fit_state(unit, data, monkeypatch, True, calls)
    monkeypatch.setattr(AttentionRounding, "finish_gradients", classmethod(counted))
    wrapped, wrapped_batches, wrapped_calls = _fit_state(twin, data, monkeypatch, False, calls)
    assert own_batches == [10, 10, 3] and wrapped_batches == [1] * 23
    assert len(own_calls) == len(wrapped_calls) == 2 * 23  # two convolutions, 23 steps
    assert all(own_calls.count(r) == 23 for r in set(own_calls))
    assert len(own) == 8 and all(torch.equal(a, b) for a, b in zip(own, wrapped, strict=True))
