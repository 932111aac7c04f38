import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, RandomSampler

from attnround_pl.calib import BlockReconstruction, build_unit_data
from attnround_pl.calib import reconstruction as reconstruction_module
from attnround_pl.calib.distributed import (
    PeerRankError,
    agree,
    close_process_group,
    rank_world,
    shard,
    wants_ddp,
)
from attnround_pl.calib.reconstruction import ShardBatches
from attnround_pl.export import read_quantized
from attnround_pl.models import build_model
from attnround_pl.quant import (
    QuantConfig,
    calibrate_activations,
    finish_rounding_gradients,
    fold_batchnorms,
    quantize_model,
    set_learning,
)

REPO = Path(__file__).resolve().parents[2]


def test_one_process_draws_the_batches_it_always_drew():
    gen = torch.Generator().manual_seed(4)
    old = list(BatchSampler(RandomSampler(range(50), replacement=True, num_samples=30 * 8,
                                          generator=gen), 8, drop_last=True))
    assert list(ShardBatches(50, 30, 8, seed=4)) == old
    # two ranks: their local indices are exactly the global batch, split by i % 2
    ranks = [list(ShardBatches(50, 30, 8, seed=4, rank=r, world=2)) for r in (0, 1)]
    for step, batch in enumerate(old):
        assert sorted(batch) == sorted([2 * j for j in ranks[0][step]] +
                                       [2 * j + 1 for j in ranks[1][step]])


def test_shard_is_strided_and_disjoint():
    batches = [torch.arange(7.0)[:, None], torch.arange(7.0, 10.0)[:, None]]
    parts = [torch.cat(shard(batches, r, 3, batch_size=2)).flatten().tolist() for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert shard(batches, 0, 1) is batches


def test_wants_ddp_and_agree_in_one_process():
    assert not wants_ddp({}) and not wants_ddp({"devices": 1}) and wants_ddp({"devices": 2})
    assert wants_ddp({"devices": [0, 1]}) and wants_ddp({"num_nodes": 2})
    assert rank_world() == (0, 1)
    agree(None)
    with pytest.raises(ValueError, match="mine"):
        agree(ValueError("mine"))


def test_rank_weighted_gradients_average_to_the_global_batch_gradient(monkeypatch):
    """What DDP computes (mean over ranks of each rank's weighted loss gradient, then eq. 6)
    equals the one-process gradient of the whole batch: alphas, LSQ steps, AQuant borders."""
    torch.manual_seed(0)
    net = build_model("resnet20", weights=None).eval()
    q = quantize_model(net, QuantConfig(w_bits=3, a_bits=3, act_border="aquant"))
    batches = [torch.randn(16, 1, 28, 28)]
    calibrate_activations(q, batches)
    fold_batchnorms(net)
    data = build_unit_data(q, net, "layer1.0", batches)
    unit = q.get_submodule("layer1.0")
    module = BlockReconstruction(unit, data, "layer1.0", batch_size=8)
    module.log = lambda *args, **kwargs: None
    params = [p for group in module.learnable() for p in group]
    set_learning(unit, 8)
    batch = torch.tensor([0, 3, 5, 6, 9, 12, 13, 15])

    def grads(world: int, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        monkeypatch.setattr(reconstruction_module, "rank_world", lambda: (0, world))
        for p in params:
            p.grad = None
        for idx in parts:
            sum(module.step_losses(data.inputs[idx], data.targets[idx])).backward()
        for p in params:  # DDP: the mean over ranks; then eq. 6 on the summed gradient
            p.grad /= world
        finish_rounding_gradients(unit)
        return [p.grad.clone() for p in params]

    whole = grads(1, [batch])
    split = grads(2, [batch[batch % 2 == 0], batch[batch % 2 == 1]])  # sizes 3 and 5
    for a, b in zip(whole, split, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9), (a - b).abs().max()
    assert any(g.abs().sum() > 0 for g in whole)


def _cli(root: Path, out: Path, name: str, devices: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "attnround_pl.cli", "calibrate",
            "--config", str(REPO / "configs" / "models" / "resnet20.yaml"),
            "--config", str(REPO / "configs" / "recipes" / "attention.yaml"),
            "--model.weights", "null",
            "--data.init_args.root", str(root), "--data.init_args.calib_size", "20",
            "--recon.iters", "10", "--recon.batch_size", "4", "--run.out_dir", str(out),
            "--run.name", name, "--run.progress", "false", "--run.eval_nearest", "false",
            "--run.host_speed", "false", "--quant.w_bits", "3", "--trainer.accelerator", "cpu",
            "--trainer.devices", str(devices), "--trainer.strategy", "ddp", *extra]


def _our_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def _port_free(port: int) -> bool:
    """Nothing listens on ``port`` (closed connections may linger in TIME_WAIT: allowed)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_two_cpu_processes_match_one_and_leave_nothing_behind(tmp_path, tiny_fmnist):
    env = {**os.environ, "MASTER_PORT": "29731"}
    for devices in (1, 2):
        done = subprocess.run(_cli(tiny_fmnist, tmp_path, f"d{devices}", devices), env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (read_quantized(tmp_path / f"d{d}" / "quantized.pt")["layers"] for d in (1, 2))
    same = sum(int((one[n]["codes"] == two[n]["codes"]).sum()) for n in one)
    total = sum(one[n]["codes"].numel() for n in one)
    assert same / total >= 0.999, same / total
    r1, r2 = (json.loads((tmp_path / f"d{d}" / "report.json").read_text()) for d in (1, 2))
    assert r2["devices"] == 2 and "devices" not in r1
    assert r2["float_top1"] == r1["float_top1"]  # metrics reduced over both ranks' halves
    # the first unit sees identical inputs in both runs: only summation order differs
    first1, first2 = r1["units"][0]["mse_final"], r2["units"][0]["mse_final"]
    assert abs(first1 - first2) <= 1e-6 * first1
    assert not _our_processes(str(tmp_path)) and _port_free(29731)


def test_a_failure_on_two_processes_is_one_error_and_no_strays(tmp_path, tiny_fmnist):
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "report.json").write_text("{}")
    env = {**os.environ, "MASTER_PORT": "29733"}
    done = subprocess.run(_cli(tiny_fmnist, tmp_path, "finished", 2), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "already holds a finished run" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    time.sleep(1)
    assert not _our_processes(str(tmp_path)) and _port_free(29733)


def test_peer_error_is_silent_in_the_cli(monkeypatch, capsys):
    from attnround_pl import cli

    def fail(args):
        raise PeerRankError("rank 0 failed: ValueError: x")

    monkeypatch.setitem(cli.__dict__, "cmd_evaluate", fail)
    assert cli.main(["evaluate", "--run", "x"]) == 2
    assert capsys.readouterr().err == ""


def test_close_process_group_tears_down_and_is_a_no_op_without_one(tmp_path):
    close_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()


def test_the_cli_closes_the_process_group_on_every_exit(monkeypatch, capsys, tmp_path):
    from attnround_pl import cli

    calls = []
    monkeypatch.setattr(cli, "close_process_group", lambda: calls.append(1))
    assert cli.main(["evaluate", "--run", str(tmp_path / "none")]) == 2  # an input error
    monkeypatch.setitem(cli.__dict__, "cmd_evaluate", lambda args: 0)
    assert cli.main(["evaluate", "--run", "x"]) == 0  # success
    assert calls == [1, 1]


def test_two_processes_stop_each_unit_at_the_step_one_process_does(tmp_path, tiny_fmnist):
    """The adaptive budget (``recon.plateau_gain``) under DDP: each window's loss is averaged
    over the ranks, so both ranks stop a unit at the same step (a rank that stopped alone
    would leave the other waiting in an all-reduce), the step one process stops it at."""
    env = {**os.environ, "MASTER_PORT": "29735"}
    for devices in (1, 2):
        done = subprocess.run(
            _cli(tiny_fmnist, tmp_path, f"p{devices}", devices, "--recon.iters", "40",
                 "--recon.plateau_gain", "0.02"),
            env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = ([u["iters"] for u in json.loads(
        (tmp_path / f"p{d}" / "report.json").read_text())["units"]] for d in (1, 2))
    assert one == two
    assert min(one) < 40 and sum(one) <= 40 * len(one)  # units stopped; the total holds
    assert not _our_processes(str(tmp_path)) and _port_free(29735)
