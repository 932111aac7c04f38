"""Put Fashion-MNIST where torchvision looks for it: ``<root>/FashionMNIST/raw/<idx files>``.

Sources, in order: files already there; Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``, gzip files unpacked here); torchvision's download.
Run as ``python -m attnround_pl.data --root data``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
from pathlib import Path

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEFAULT_ROOT = Path(os.environ.get("ATTNROUND_DATA", "data"))


def raw_dir(root: Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def is_prepared(root: Path) -> bool:
    return all((raw_dir(root) / name).is_file() for name in FILES)


def unpack_debian(root: Path, source: Path = DEBIAN_DIR) -> bool:
    """Unpack the Debian package's gzip files into ``root``; False if the package is absent."""
    if not all((source / f"{name}.gz").is_file() for name in FILES):
        return False
    target = raw_dir(root)
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        tmp = target / f".{name}.part"
        with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target / name)
    return True


def prepare(root: Path = DEFAULT_ROOT) -> str:
    """Make sure the raw files are under ``root``; return where they came from."""
    root = Path(root)
    if is_prepared(root):
        return "already present"
    if unpack_debian(root):
        return f"unpacked from {DEBIAN_DIR}"
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        raise RuntimeError(
            f"Fashion-MNIST is not in {raw_dir(root)}, Debian's dataset-fashion-mnist is not "
            f"installed ({DEBIAN_DIR} missing) and torchvision's download failed ({exc}). "
            "Install the package (apt-get install dataset-fashion-mnist) or put the four idx "
            f"files in {raw_dir(root)}."
        ) from exc
    return "downloaded by torchvision"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    try:
        how = prepare(args.root)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Fashion-MNIST in {raw_dir(args.root)} ({how})")
    return 0
