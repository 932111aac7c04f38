"""A short demo of the quantization core on real data (Fashion-MNIST), no Lightning involved.

Trains a small CNN for one epoch, then quantizes it with each fixed rounding function
(nearest, floor, ceil, stochastic) at several weight bit widths, calibrating activation
steps on 1,024 training images, and prints test top-1 for each. The learned roundings
(AdaRound, Attention Round) need block reconstruction, which ``attnround-pl calibrate``
does; this demo does not pretend to.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from .data.fashion_mnist_files import DEFAULT_ROOT, prepare
from .quant import QuantConfig, calibrate_activations, quantize_model

MEAN, STD = 0.2860, 0.3530
FIXED_ROUNDINGS = ("nearest", "floor", "ceil", "stochastic")


def small_cnn() -> nn.Module:
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16, 1), *block(16, 32, 2), *block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


@torch.no_grad()
def top1(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / total


def run(
    root: Path = DEFAULT_ROOT,
    epochs: int = 2,
    w_bits: tuple[int, ...] = (4, 3, 2),
    a_bits: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    console = Console()
    for bits in w_bits:  # bad bits fail before any training
        QuantConfig(w_bits=bits, a_bits=a_bits).validate()
    prepare(root)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train = datasets.FashionMNIST(str(root), train=True, transform=tf)
    test = datasets.FashionMNIST(str(root), train=False, transform=tf)
    torch.manual_seed(seed)
    model = small_cnn()
    loader = DataLoader(train, batch_size=128, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * len(loader))
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training a small CNN", total=epochs * len(loader))
        for _ in range(epochs):
            model.train()
            for x, y in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                sched.step()
                progress.advance(task)
    train_s = time.perf_counter() - start
    test_loader = DataLoader(test, batch_size=1000)
    results = {"float": top1(model, test_loader)}
    gen = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(len(train), generator=gen)[:1024].tolist()
    calib = [x for x, _ in DataLoader(Subset(train, calib_idx), batch_size=256)]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("quantizing", total=len(w_bits) * len(FIXED_ROUNDINGS))
        for bits in w_bits:
            for name in FIXED_ROUNDINGS:
                cfg = QuantConfig(w_bits=bits, a_bits=a_bits, rounding=name, seed=seed)
                qmodel = quantize_model(model, cfg)
                calibrate_activations(qmodel, calib)
                results[f"W{bits}A{a_bits} {name}"] = top1(qmodel, test_loader)
                progress.advance(task)
    table = Table(title=f"Fashion-MNIST test top-1 (%), small CNN trained {epochs} epoch(s)")
    table.add_column("rounding")
    for bits in w_bits:
        table.add_column(f"W{bits}A{a_bits}", justify="right")
    for name in FIXED_ROUNDINGS:
        table.add_row(name, *[f"{results[f'W{b}A{a_bits} {name}']:.2f}" for b in w_bits])
    console.print(table)
    console.print(
        f"float top-1 {results['float']:.2f} %, training {train_s:.0f} s. First/last layer "
        "weights and the network input stay at 8 bits. Learned rounding (AdaRound, Attention "
        "Round) needs block reconstruction: not part of this demo."
    )
    return results
