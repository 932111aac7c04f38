"""The main job's settings as ``attnround-pl calibrate`` arguments: the embedded ResNet-20
(``configs/models/resnet20.yaml``) with the default recipe, Attention Round at the paper's
settings (``configs/recipes/attention.yaml``), composed as a user composes them."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = CONFIGS / "models" / "resnet20.yaml"
RECIPE = CONFIGS / "recipes" / "attention.yaml"
MAIN = ["--config", str(MODEL), "--config", str(RECIPE)]
