"""What the generated tables share: the embedded models' display names in table order, the
headline settings in table order, the like-for-like suite's results file (issue 34's goal table
and the paired table both read it), and the normal quantile of a two-sided 95 % interval.

It imports nothing, so every table script can use it: ``plots.py`` imports ``paired_table.py``,
which therefore cannot import ``plots.py``, and ``paired_table.py`` must not pull in torch
through ``paired.py``.
"""

MODEL_NAMES = {"resnet20": "ResNet-20", "mobilenetv2": "MobileNetV2"}
SETTINGS = ("W4A4", "W3A3", "W2A4", "W2A2")
LIKE_FOR_LIKE = "accuracy_like_for_like.json"
Z95 = 1.96
