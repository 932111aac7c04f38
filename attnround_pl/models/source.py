"""Where a float model comes from, recorded so a saved quantized model can rebuild it.

A ``ModelSource`` is one of:

- ``zoo``: a name ``build_model`` knows: the embedded Fashion-MNIST models, RegNetX-600MF, and
  every torchvision classification or segmentation model (``torchvision.models.list_models``);
- ``import``: the import path of the user's own ``nn.Module`` (or ``LightningModule``) class plus
  the keyword arguments its constructor took (``init_args``): what the CLI's
  ``--model.net.class_path`` / ``--model.net.init_args`` give;
- ``object``: a model handed over as an object (built in a notebook or a script): its class is
  recorded for the messages, but it cannot be rebuilt; loading takes the float model object
  from the caller.

Weights never come from the source when a quantized model is rebuilt: every quantized tensor
comes from the checkpoint, so the architecture is built with random weights.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .zoo import ModelLoadError, build_model

KINDS = ("zoo", "import", "object")


def class_path_of(obj: object) -> str:
    """``module.QualName`` of an object's class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(class_path: str) -> type:
    """The class at ``package.module.Class`` (or ``package.module:Class``); the current folder
    is searched too, as ``python -m`` would. Every failure is one ModelLoadError."""
    module_name, sep, name = class_path.replace(":", ".").rpartition(".")
    if not sep or not module_name or not name:
        raise ModelLoadError(f"class path {class_path!r} is not of the form module.Class")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import module {module_name!r} for {class_path!r} ({exc}); the file must be "
            "importable from the current folder or PYTHONPATH"
        ) from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ModelLoadError(f"{class_path!r} is not an nn.Module class")
    return cls


@dataclass
class ModelSource:
    """How to rebuild a float architecture (see the module docstring).

    Args:
        kind: 'zoo', 'import' or 'object'.
        name: the zoo name, or the class path (``package.module.Class``).
        init_args: constructor keyword arguments ('import').
        num_classes: output classes of a zoo model (None: the model's default).
    """

    kind: str
    name: str
    init_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelLoadError(f"model source kind {self.kind!r}: use one of {', '.join(KINDS)}")

    @classmethod
    def zoo(cls, name: str, num_classes: int | None = None) -> ModelSource:
        return cls("zoo", name, num_classes=num_classes)

    @classmethod
    def of_object(cls, model: nn.Module) -> ModelSource:
        return cls("object", class_path_of(model))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        return cls(**data)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelSource:
        """The source a saved quantized model records; files written before sources were
        recorded name a zoo model in ``arch``."""
        if "source" in meta:
            return cls.from_dict(meta["source"])
        return cls.zoo(meta["arch"], meta.get("num_classes"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """A short name for run folders and tables: the zoo name or the class name."""
        return self.name if self.kind == "zoo" else self.name.rpartition(".")[2]

    def build(self, model: nn.Module | None = None) -> nn.Module:
        """The float architecture, random weights, eval mode. ``model``: the caller's float
        model object, used as it is (needed for an 'object' source, allowed for every kind)."""
        if model is not None:
            return model.eval()
        if self.kind == "zoo":
            return build_model(self.name, weights=None, num_classes=self.num_classes)
        if self.kind == "import":
            cls = import_class(self.name)
            try:
                return cls(**self.init_args).eval()
            except TypeError as exc:
                raise ModelLoadError(
                    f"cannot build {self.name} with init_args {self.init_args}: {exc}"
                ) from None
        raise ModelLoadError(
            f"this quantized model was made from a {self.label} object ({self.name}) that "
            "cannot be rebuilt from the file: pass the float model, e.g. "
            f"attnround_pl.load(path, model={self.label}(...))"
        )


def init_args_of(model: nn.Module) -> dict[str, Any] | None:
    """A LightningModule's saved hyperparameters when they are its constructor's arguments
    (``self.save_hyperparameters()``), else None."""
    hparams = getattr(model, "hparams", None)
    if not hparams:
        return None
    params = inspect.signature(type(model).__init__).parameters
    args = dict(hparams)
    return args if set(args) <= set(params) else None


def source_of(model: nn.Module) -> ModelSource:
    """The source of a model handed over as an object: 'import' for a LightningModule of an
    importable class whose hyperparameters are its constructor's arguments, else 'object'."""
    args = init_args_of(model)
    if args is not None and type(model).__module__ != "__main__":
        return ModelSource("import", class_path_of(model), args)
    return ModelSource.of_object(model)
