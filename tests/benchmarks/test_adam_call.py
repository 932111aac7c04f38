import json

import pytest
import torch
from benchmark_scripts import load_benchmark


def _load():
    return load_benchmark("adam_call")


def _params(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (5,), (2, 7), (1,)]
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def _adam(params: list[torch.Tensor], **options) -> torch.optim.Adam:
    opt = torch.optim.Adam([{"params": params[:2], "lr": 3e-3},
                            {"params": params[2:], "lr": 4e-4, "weight_decay": 0.01}],
                           **options)

    def halve_gradients(opt, args, kwargs) -> None:  # changes the gradients, as eq. 6 does
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(0.5)

    opt.register_step_pre_hook(halve_gradients)
    return opt


def test_lean_adam_updates_bit_for_bit_as_torch_optim_does():
    bench = _load()
    a, b = _params(0), _params(0)
    opt_a, opt_b = _adam(a, fused=True), _adam(b, fused=True)
    gen = torch.Generator().manual_seed(1)
    lean = None
    for step in range(6):
        grads = [torch.randn(p.shape, generator=gen) for p in a]
        for i, (pa, pb, g) in enumerate(zip(a, b, grads, strict=True)):
            # one parameter without a gradient on some steps: both skip it
            skip = i == 3 and step % 2 == 1
            pa.grad = None if skip else g.clone()
            pb.grad = None if skip else g.clone()
        opt_a.step()
        if lean is None:
            opt_b.step()  # the state exists after the first step
            lean = bench.LeanAdam(opt_b)
        else:
            lean.step()
        for pa, pb in zip(a, b, strict=True):
            assert torch.equal(pa, pb)
            assert torch.equal(opt_a.state[pa]["exp_avg_sq"], opt_b.state[pb]["exp_avg_sq"])
            assert torch.equal(opt_a.state[pa]["step"], opt_b.state[pb]["step"])
    assert opt_b.state[b[3]]["step"].item() == 3  # skipped on steps 1, 3, 5
    assert not torch.equal(a[0], _params(0)[0])  # the parameters moved
    # same_update compares one update from the same state and leaves the state alone
    before = [t.clone() for t in bench._optimizer_tensors(opt_b)]
    for p in b:
        p.grad = torch.ones_like(p)
    assert bench.same_update(opt_b)
    assert all(torch.equal(x, y) for x, y in zip(before, bench._optimizer_tensors(opt_b),
                                                  strict=True))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in b)


def test_lean_adam_refuses_what_it_does_not_run():
    bench = _load()
    params = _params(0)
    with pytest.raises(ValueError, match="fused Adam without foreach or for-loop"):
        bench.LeanAdam(_adam(params, foreach=True))
    with pytest.raises(ValueError, match="without amsgrad"):
        bench.LeanAdam(_adam(params, fused=True, amsgrad=True))
    with pytest.raises(ValueError, match="not SGD"):
        bench.LeanAdam(torch.optim.SGD(params, lr=0.1))
    with pytest.raises(ValueError, match="step it once first"):
        bench.LeanAdam(_adam(params, fused=True))


def test_adam_call_times_a_unit_and_writes_its_json(tmp_path, capsys):
    bench = _load()
    bench.main(["--model", "resnet20", "--images", "random", "--max-units", "1",
                "--rounds", "1", "--steps", "2", "--calls", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "adam_call_resnet20.json").read_text())
    (row,) = result["units"]
    assert row["unit"] == "conv1..layer1.1" and row["same_bits"] is True
    assert row["parameters"] > 2
    assert all(row[k] > 0 for k in ("call_torch_us", "call_lean_us", "step_torch_ms",
                                     "step_lean_ms"))
    total = result["total"]
    assert total["step_lean_over_torch"] == pytest.approx(row["step_lean_ms"]
                                                          / row["step_torch_ms"])
    saved = (row["call_torch_us"] - row["call_lean_us"]) / 1e3 / row["step_torch_ms"]
    assert total["call_saving_percent_of_step"] == pytest.approx(100 * saved)
    out = capsys.readouterr().out
    assert "the call's saving" in out
    assert (f"| conv1..layer1.1 | {row['parameters']} | True | {row['call_torch_us']:.0f} | "
            f"{row['call_lean_us']:.0f} | {row['step_torch_ms']:.2f} | "
            f"{row['step_lean_ms']:.2f} |") in out.splitlines()
