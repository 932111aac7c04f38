"""attnround-pl: post-training quantization with Attention Round.

The public API (imported on first use, so ``import attnround_pl`` stays light):

- ``quantize(model, data, w_bits=4, a_bits=4, ...)``: any ``nn.Module`` and calibration images
  in, the quantized model out, with ``.report``, a ``Report`` (see ``attnround_pl.api``);
- ``save(qmodel, path)`` / ``load(path, model=None)``;
- ``export_onnx(qmodel, example, path)`` / ``export_state(...)``: deployment files;
- ``QuantConfig``, ``MixedConfig``, ``ReconConfig``, ``RunConfig``: every setting, as the CLI's
  YAML has them (``quant:``, ``mixed:``, ``recon:``, ``run:``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "quantize": "attnround_pl.api",
    "save": "attnround_pl.api",
    "load": "attnround_pl.api",
    "QuantConfig": "attnround_pl.quant",
    "MixedConfig": "attnround_pl.mixed.config",
    "ReconConfig": "attnround_pl.calib.settings",
    "RunConfig": "attnround_pl.calib.settings",
    "ModelSource": "attnround_pl.models.source",
    "Report": "attnround_pl.calib.report",
    "export_onnx": "attnround_pl.export",
    "export_state": "attnround_pl.export",
    "load_state": "attnround_pl.export",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'attnround_pl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
