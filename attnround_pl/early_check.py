"""The calibration's own settings, checked before Lightning is imported.

``attnround-pl calibrate`` parses its arguments with LightningCLI, and importing Lightning takes
about 5 s on the 2-core development machine. The settings of our own groups (``quant``,
``recon``, ``run``) are read here first from the ``--config`` files and ``--group.key value``
options and validated by the same ``validate()`` the full parse calls, so a refused setting
answers in about the time torch takes to import. Whatever this reading does not fully
understand (another option form, a nested key, a value of another type than the field's) is left
alone: LightningCLI parses and checks everything again, with its own messages.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

GROUPS = ("quant", "recon", "run")


class _Unsure(Exception):  # noqa: N818 - control flow: leave the arguments to LightningCLI
    pass


def _option(arg: str, rest: list[str]) -> tuple[str, str | None, int]:
    """(name, value, arguments consumed) of ``--name value`` / ``--name=value``."""
    if "=" in arg:
        name, value = arg.split("=", 1)
        return name, value, 1
    if rest and not rest[0].startswith("--"):
        return arg, rest[0], 2
    return arg, None, 1


def read_settings(args: list[str]) -> dict[str, dict[str, Any]]:
    """The ``quant``/``recon``/``run`` keys given by ``args``: config files in order, then the
    options after them, as jsonargparse applies them. Raises _Unsure for anything else than
    plain ``--config FILE`` and ``--<group>.<key> VALUE`` with other options passed over."""
    groups: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise _Unsure
        name, value, used = _option(arg, args[i + 1 :])
        i += used
        if name == "--config":
            if value is None or not Path(value).is_file():
                raise _Unsure
            loaded = yaml.safe_load(Path(value).read_text()) or {}
            if not isinstance(loaded, dict):
                raise _Unsure
            for group in GROUPS:
                section = loaded.get(group) or {}
                if not isinstance(section, dict):
                    raise _Unsure
                groups[group].update(section)
            continue
        group, _, key = name[2:].partition(".")
        if group in GROUPS:
            if value is None or not key or "." in key:
                raise _Unsure
            groups[group][key] = yaml.safe_load(value)
    return groups


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` already has the type ``hint`` names (no conversion)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    return False  # a nested settings class (quant.mixed): left to LightningCLI


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names or not _matches(value, hints[key]):
            raise _Unsure
    return cls(**values)


def check_settings(args: list[str]) -> None:
    """Validate the ``quant``, ``recon`` and ``run`` settings ``args`` give, when they can be
    read without LightningCLI; a refused one raises its ``SettingError``."""
    if any(arg in ("-h", "--help", "--print_config") or arg.startswith("--print_config=")
           for arg in args):
        return
    try:
        groups = read_settings(args)
        from .calib.settings import ReconConfig, RunConfig
        from .quant.config import QuantConfig

        classes = {"quant": QuantConfig, "recon": ReconConfig, "run": RunConfig}
        configs = [_build(cls, groups[group]) for group, cls in classes.items()]
    except (_Unsure, yaml.YAMLError, OSError, TypeError, ValueError):
        return
    for config in configs:
        config.validate()
