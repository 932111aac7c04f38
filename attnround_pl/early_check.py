"""The calibration's own settings, checked before Lightning is imported.

``attnround-pl calibrate`` parses its arguments with LightningCLI, and importing Lightning takes
about 5 s on the 2-core development machine. The settings of our own groups (``quant``,
``mixed``, ``recon``, ``run``) are read here first from the ``--config`` files (several, a
later one overriding an earlier one, as jsonargparse applies them) and ``--group.key value``
options (``--quant.rounding_args.tau 0.25``, ``--quant.drop.prob 0.5`` included) and validated
by the same ``validate()`` the full parse calls, so a refused setting answers in about the time
torch takes to import. A config file that is missing, a folder, not YAML or not a mapping is
one line here (``ConfigFileError``), and so is a key of an earlier version (``quant.tau``: the
key that replaced it). Whatever this reading does not fully understand (another option form, a
value of another type than the field's) is left alone: LightningCLI parses and checks
everything again, with its own messages.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import SettingError

GROUPS = ("quant", "mixed", "recon", "run")


class _Unsure(Exception):  # noqa: N818 - control flow: leave the arguments to LightningCLI
    pass


class ConfigFileError(SettingError):
    """A ``--config`` file that is not there, not a file, not YAML or not a mapping."""


def _option(arg: str, rest: list[str]) -> tuple[str, str | None, int]:
    """(name, value, arguments consumed) of ``--name value`` / ``--name=value``."""
    if "=" in arg:
        name, value = arg.split("=", 1)
        return name, value, 1
    if rest and not rest[0].startswith("--"):
        return arg, rest[0], 2
    return arg, None, 1


def _looks_like_a_path(value: str) -> bool:
    """Whether a ``--config`` value names a file (jsonargparse also takes YAML text)."""
    return "\n" not in value and ":" not in value and not value.lstrip().startswith("{")


def read_config_file(value: str) -> dict[str, Any]:
    """The mapping a ``--config`` file holds; any problem with the file is one
    ConfigFileError naming it."""
    path = Path(value)
    if path.is_dir():
        raise ConfigFileError(f"--config {value!r} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigFileError(f"--config file {value!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigFileError(f"--config file {value!r} is not valid YAML: {problem}{where}"
                              ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"--config file {value!r} cannot be read: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigFileError(
            f"--config file {value!r} holds a YAML {type(loaded).__name__}, not a mapping of "
            "settings (model:, data:, quant:, recon:, ...)"
        )
    return loaded


def _refuse_moved(group: str, section: dict[str, Any]) -> None:
    """A key of an earlier version (``quant.tau``) is one line naming the key now."""
    from .quant.config import moved_key_message

    for key, value in section.items():
        if isinstance(value, dict) and value:  # a moved section: name its first key
            key = f"{key}.{next(iter(value))}"
        message = moved_key_message(f"{group}.{key}")
        if message is not None:
            raise SettingError(message)


def _set(section: dict[str, Any], key: str, value: Any) -> None:
    """``section[a][b] = value`` for the key ``a.b`` (a nested settings key such as
    ``rounding_args.tau`` or ``drop.prob``), merged into what the configs gave."""
    *parents, last = key.split(".")
    for part in parents:
        inner = section.get(part)
        if inner is None:
            inner = section[part] = {}
        if not isinstance(inner, dict):
            raise _Unsure
        section = inner
    section[last] = value


def read_settings(args: list[str]) -> dict[str, dict[str, Any]]:
    """The ``quant``/``mixed``/``recon``/``run`` keys given by ``args``: config files in order,
    then the options after them, as jsonargparse applies them. Raises ConfigFileError for a
    config file that cannot be read, SettingError for a key of an earlier version, _Unsure for
    anything else than plain ``--config FILE`` and ``--<group>.<key> VALUE`` with other
    options passed over."""
    groups: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise _Unsure
        name, value, used = _option(arg, args[i + 1 :])
        i += used
        if name == "--config":
            if value is None or not _looks_like_a_path(value):
                raise _Unsure
            loaded = read_config_file(value)
            for group in GROUPS:
                section = loaded.get(group) or {}
                if not isinstance(section, dict):
                    raise _Unsure
                _refuse_moved(group, section)
                groups[group].update(section)
            continue
        group, _, key = name[2:].partition(".")
        if group in GROUPS:
            if key:
                _refuse_moved(group, {key: None})
            if value is None or not key:
                raise _Unsure
            _set(groups[group], key, yaml.safe_load(value))
    return groups


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` already has the type ``hint`` names (no conversion)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
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
    return False


def _build(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` when every value already has its field's type; a nested settings
    dataclass (``quant.drop``) is built from its mapping the same way."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    built = {}
    for key, value in values.items():
        if key not in names:
            raise _Unsure
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value)
        elif not _matches(value, hint):
            raise _Unsure
        built[key] = value
    return cls(**built)


def check_settings(args: list[str]) -> None:
    """Validate the ``quant``, ``mixed``, ``recon`` and ``run`` settings ``args`` give, when
    they can be read without LightningCLI; a refused one raises its ``SettingError``."""
    if any(arg in ("-h", "--help", "--print_config") or arg.startswith("--print_config=")
           for arg in args):
        return
    try:
        groups = read_settings(args)
        from .calib.settings import ReconConfig, RunConfig
        from .mixed.config import MixedConfig
        from .quant.config import QuantConfig

        classes = {"quant": QuantConfig, "mixed": MixedConfig, "recon": ReconConfig,
                   "run": RunConfig}
        configs = [_build(cls, groups[group]) for group, cls in classes.items()]
    except SettingError:
        raise
    except (_Unsure, yaml.YAMLError, OSError, TypeError, ValueError):
        return
    for config in configs:
        config.validate()
