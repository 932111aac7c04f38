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


def written(root: Path) -> str:
    """How many files, how many MB ``raw_dir(root)`` holds, e.g. ``4 files (55 MB)``."""
    files = [p for p in raw_dir(root).iterdir() if p.is_file()]
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    return f"{len(files)} file{'s' * (len(files) != 1)} ({megabytes:.0f} MB)"


def _first_missing(root: Path) -> Path | None:
    """The outermost of ``root``, ``root/FashionMNIST``, ``raw_dir(root)`` that does not exist."""
    for folder in (root, root / "FashionMNIST", raw_dir(root)):
        if not folder.exists():
            return folder
    return None


def prepare(root: Path = DEFAULT_ROOT) -> str:
    """Make sure the raw files are under ``root``; return one line saying what was written where
    (or that the files were already there).

    Raises RuntimeError (one line) when neither Debian's package nor torchvision's download
    gives them; the folders this call created are removed again then."""
    root = Path(root)
    if is_prepared(root):
        return f"Fashion-MNIST: already in {raw_dir(root)}"
    if unpack_debian(root):
        return f"Fashion-MNIST: unpacked {written(root)} into {raw_dir(root)} from {DEBIAN_DIR}"
    from torchvision.datasets import FashionMNIST

    created = _first_missing(root)
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # any download failure gets the same advice
        if created is not None and created.exists():
            shutil.rmtree(created)  # only what this call made: nothing half-written stays
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise RuntimeError(
            f"Fashion-MNIST is not in {raw_dir(root)}, Debian's dataset-fashion-mnist is not "
            f"installed ({DEBIAN_DIR} missing) and torchvision's download failed ({reason}). "
            "Install the package (apt-get install dataset-fashion-mnist) or put the four idx "
            f"files in {raw_dir(root)}."
        ) from exc
    return f"Fashion-MNIST: downloaded {written(root)} into {raw_dir(root)} with torchvision"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    try:
        line = prepare(args.root)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0
