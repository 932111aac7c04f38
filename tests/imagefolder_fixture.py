"""Write a tiny ImageNet-style folder (train/<class>/*.png, val/<class>/*.png) for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 8,
                      val_per_class: int = 4, size: int = 40) -> tuple[Path, Path]:  # fmt: skip
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
