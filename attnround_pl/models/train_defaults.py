"""Train an embedded default model on Fashion-MNIST and save its checkpoint and accuracy.

    python -m attnround_pl.models.train_defaults --model resnet20 --epochs 8

Writes ``attnround_pl/models/checkpoints/<model>_fmnist.pt`` (float state dict, BatchNorm
unfolded) and ``<model>_fmnist.json`` (test top-1, epochs, seconds, machine). SGD with Nesterov
momentum, one-cycle learning rate, random crop (pad 2) and horizontal flip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from ..data.fashion_mnist_files import DEFAULT_ROOT, prepare
from .fmnist_nets import mobilenetv2_small, resnet20

MEAN, STD = 0.2860, 0.3530
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
BUILDERS = {"resnet20": resnet20, "mobilenetv2": mobilenetv2_small}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / total


def train(name: str, epochs: int, root: Path, lr: float, batch: int, seed: int) -> dict:
    prepare(root)
    norm = transforms.Normalize((MEAN,), (STD,))
    aug = transforms.Compose(
        [
            transforms.RandomCrop(28, padding=2),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    train_set = datasets.FashionMNIST(str(root), train=True, transform=aug)
    test_set = datasets.FashionMNIST(
        str(root), train=False, transform=transforms.Compose([transforms.ToTensor(), norm])
    )
    torch.manual_seed(seed)
    model = BUILDERS[name]().to(memory_format=torch.channels_last)
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, num_workers=1, drop_last=True)
    test_loader = DataLoader(test_set, batch_size=500)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader))
    start = time.perf_counter()
    history = []
    with Progress() as progress:
        task = progress.add_task(f"training {name}", total=epochs * len(loader))
        for epoch in range(epochs):
            model.train()
            for x, y in loader:
                x = x.to(memory_format=torch.channels_last)
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y, label_smoothing=0.1).backward()
                opt.step()
                sched.step()
                progress.advance(task)
            acc = evaluate(model, test_loader)
            history.append(acc)
            progress.console.print(f"epoch {epoch + 1}/{epochs}: test top-1 {acc:.2f} %")
    seconds = time.perf_counter() - start
    CHECKPOINT_DIR.mkdir(exist_ok=True)
    model = model.to(memory_format=torch.contiguous_format)
    ckpt = CHECKPOINT_DIR / f"{name}_fmnist.pt"
    tmp = ckpt.with_suffix(".pt.part")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    info = {
        "model": name,
        "dataset": "fashion-mnist",
        "float_top1": round(history[-1], 2),
        "epochs": epochs,
        "per_epoch_top1": [round(a, 2) for a in history],
        "lr": lr,
        "batch_size": batch,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": f"python -m attnround_pl.models.train_defaults --model {name} "
        f"--epochs {epochs} --lr {lr} --batch {batch} --seed {seed}",
    }
    (CHECKPOINT_DIR / f"{name}_fmnist.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(BUILDERS), required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    info = train(args.model, args.epochs, args.root, args.lr, args.batch, args.seed)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
