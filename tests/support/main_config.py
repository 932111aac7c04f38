"""The main job's settings as ``attnround-pl calibrate`` arguments: the embedded ResNet-20
(``configs/models/resnet20.yaml``) with the default recipe (``configs/recipes/attnround.yaml``:
Attention Round at the paper's settings with Lp range searches, p = 2.4), composed as a user
composes them. ``PAPER`` is the paper's setting (``configs/recipes/attention.yaml``)."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = CONFIGS / "models" / "resnet20.yaml"
RECIPE = CONFIGS / "recipes" / "attnround.yaml"
MAIN = ["--config", str(MODEL), "--config", str(RECIPE)]
PAPER = ["--config", str(MODEL), "--config", str(CONFIGS / "recipes" / "attention.yaml")]
