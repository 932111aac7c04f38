"""Write a tiny ImageNet-style folder (train/<class>/*.png, val/<class>/*.png) for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 8,
                      val_per_class: int = 4, size: int = 40) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] //= 4  # a colour cue per class
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root / "train", root / "val"


def write_image(path: Path, height: int = 6, width: int = 6,
                colour: tuple[int, int, int] = (51, 102, 204)) -> Path:
    """One constant-colour RGB PNG of height x width pixels at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), colour, dtype=np.uint8)).save(path)
    return path


def make_unlabelled_folder(root: Path, count: int = 6, nested: int = 0, height: int = 6,
                           width: int = 6) -> Path:
    """``count`` PNGs directly in ``root`` and ``nested`` more in ``root/more/deeper``; image i
    (top level first, then nested) has the constant colour (i, 2i, 3i)."""
    for i in range(count + nested):
        folder = root if i < count else root / "more" / "deeper"
        write_image(folder / f"img{i:02d}.png", height, width, (i, 2 * i, 3 * i))
    return root
