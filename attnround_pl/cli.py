"""``attnround-pl`` command line, on LightningCLI.

    attnround-pl calibrate --config configs/models/resnet20.yaml \
        --config configs/recipes/attnround.yaml [--quant.w_bits 3 ...]
    attnround-pl evaluate --run runs/<run folder>
    attnround-pl export --run runs/<run folder> --format onnx|state [--out FILE]

``calibrate`` composes its settings from several ``--config`` files, a later one overriding an
earlier one, then the options: a model file (``configs/models/``: model, data, trainer), a
recipe (``configs/recipes/``: rounding and its settings, reconstruction) and, optionally, a
precision file (``configs/precision/``: bits, mixed precision). It takes every LightningCLI
option: ``--print_config``, ``--model.*`` (FloatModel: ``--model.arch`` a zoo or torchvision
name, or ``--model.net.class_path`` / ``init_args`` of the user's own nn.Module or
LightningModule), ``--data`` (any LightningDataModule: ours, or the user's own, whose
train_dataloader feeds calibration and val/test_dataloader evaluation), ``--trainer.*`` and our
groups ``--quant.*`` (the rounding's own settings: ``--quant.rounding_args.tau 0.25``),
``--mixed.*``, ``--recon.*`` and ``--run.*``. One seed (``--seed_everything``) seeds
everything. Class paths resolve against the current folder and
PYTHONPATH. Lightning's optimizer and learning-rate scheduler options are left out: the
reconstruction sets its own (``--recon.lr``, ``--recon.lr_schedule``).

Start-up: this module imports the standard library and ``errors`` only. Torch, Lightning and
the export packages are imported by the command that needs them, so ``attnround-pl --help`` and
``attnround-pl evaluate --help`` answer at once (``benchmarks/startup.py`` measures it).

An option or config key jsonargparse refuses (unknown, of the wrong type, a missing config
file) is reduced to one line, with the closest valid key when there is one
(``unknown option --quant.w_bit; did you mean w_bits?``); a key of an earlier version says
which key replaced it (``quant.tau is now quant.rounding_args.tau: ...``).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import inspect
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calib.settings import FORMATS
from .early_check import check_settings
from .errors import InputError, SettingError

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

    from .models.source import ModelSource

USAGE = """usage: attnround-pl {calibrate,evaluate,export} ...

  calibrate   quantize a model with block reconstruction (LightningCLI: --config, --print_config)
  evaluate    top-1/top-5 of a finished run's quantized checkpoint (--run <run folder>)
  export      state file or ONNX QDQ model of a finished run, checked against PyTorch
              (--run <run folder> --format onnx|state [--out FILE])

'attnround-pl calibrate --help' lists every option."""

TRACEBACK_ENV = "ATTNROUND_PL_TRACEBACK"

CALIBRATE_USAGE = """attnround-pl calibrate [--config FILE ...] [--print_config]
                              [--seed_everything N] [--quant.* ...] [--mixed.* ...]
                              [--recon.* ...] [--run.* ...]
                              [--trainer.* ...] [--model.* ...] [--data CLASS --data.* ...]"""

# A misspelt option is refused, not expanded (argparse would read --quant.w_bit as
# --quant.w_bits); a parse error raises (one line in main), not exits with the usage.
PARSER_KWARGS = {
    "exit_on_error": False,
    "allow_abbrev": False,
    "usage": CALIBRATE_USAGE,
    "description": "Quantize a model with block reconstruction. Settings come from --config "
    "YAML files (a model: configs/models/*.yaml, a recipe: configs/recipes/*.yaml, bits: "
    "configs/precision/*.yaml) and the options below; a later one wins.",
}


class ArgumentsError(SettingError):
    """An option or config key the parser refused: unknown, of the wrong type, required and
    missing, or a config file that is not there; the message is one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can cause by input: printed as one line, exit status 2.

    Lightning's MisconfigurationException (Trainer settings it refuses, ``--trainer.devices
    0``) is among them once Lightning is loaded: nothing raises it before. Anything else is a
    bug and keeps its traceback; ``ATTNROUND_PL_TRACEBACK=1`` shows it for these too.
    """
    errors: list[type[BaseException]] = [InputError, FileExistsError, FileNotFoundError]
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None:
        errors.append(lightning.MisconfigurationException)
    return tuple(errors)


def peer_rank_errors() -> tuple[type[BaseException], ...]:
    """``PeerRankError`` (another DDP rank failed) once the module that raises it is loaded."""
    distributed = sys.modules.get("attnround_pl.calib.distributed")
    return (distributed.PeerRankError,) if distributed is not None else ()


def close_process_group() -> None:
    """DDP: tear this process's group down before interpreter shutdown (see
    ``calib.distributed.close_process_group``); without torch.distributed loaded there is none."""
    if "torch.distributed" in sys.modules:
        from .calib.distributed import close_process_group as close

        close()


# ---- jsonargparse's errors, reduced to one line ----

_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "dict": "a mapping ({key: value})"}
_PLURALS = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings"}
# Parser keys that are not settings a config file holds.
_NOT_KEYS = {"help", "config", "print_config", "print_shtab", argparse.SUPPRESS}


def _keys(parser: Any) -> list[str]:
    """Every key the parser takes, dotted (``quant``, ``quant.w_bits``, ``quant.drop.prob``),
    in its order."""
    return [action.dest for action in parser._actions if action.dest not in _NOT_KEYS]


def _children(keys: list[str], group: str) -> list[str]:
    """The keys directly under ``group`` ('' for the top level), in the parser's order."""
    prefix = f"{group}." if group else ""
    names = [key[len(prefix) :].split(".")[0] for key in keys if key.startswith(prefix)]
    return list(dict.fromkeys(names))


def did_you_mean(name: str, valid: list[str], where: str) -> str:
    """``did you mean w_bits?`` for the closest valid name, else the list of valid names."""
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f"did you mean {close[0]}?"
    return f"{where} takes: {', '.join(valid)}" if valid else f"{where} takes no keys"


def unknown_key(parser: Any, key: str, option: bool = False) -> str:
    """One line for a key the parser does not take: the key that replaced it when it is one of
    an earlier version, else the closest one of its group."""
    from .quant.config import moved_key_message

    moved = moved_key_message(key)
    if moved is not None:
        return moved
    keys = _keys(parser)
    parts = key.split(".")
    depth = 0  # the leading parts that name a group the parser has
    while depth < len(parts) - 1 and ".".join(parts[: depth + 1]) in keys:
        depth += 1
    group = ".".join(parts[:depth])
    named = f"option --{key}" if option else f"key {key}"
    return f"unknown {named}; " + did_you_mean(
        parts[depth], _children(keys, group), group or "the top level"
    )


def _unknown_init_arg(class_path: str, key: str, name: str) -> str:
    """One line for an ``init_args`` key the class's ``__init__`` does not take."""
    try:
        module, _, attr = class_path.rpartition(".")
        params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
        valid = [p for p in params if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return f"unknown key {key}.init_args.{name} ({class_path} does not take it)"
    hint = did_you_mean(name, valid, class_path)
    return f"unknown key {key}.init_args.{name} ({class_path} does not take it); {hint}"


def _wrong_type(key: str, body: str) -> str | None:
    """``quant.w_bits=four must be an integer``; NaN or infinity for a float: ``must be a
    finite number``; ``(or null)`` when the key also takes null."""
    kinds = [k for k in re.findall(r"Expected a <class '(\w+)'>", body) if k != "NoneType"]
    if not kinds:
        return None
    given = re.search(r"Given value: (.*)", body) or re.search(r"Got value: (.*)", body)
    value = given.group(1).strip() if given else "?"
    if "float" in kinds:
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not math.isfinite(number):
            return f"{key}={value} must be a finite number"
    if re.search(r"Subtypes: \[list\[", body):
        described = f"a list of {_PLURALS.get(kinds[0], kinds[0])}"
    else:
        described = " or ".join(dict.fromkeys(_KINDS.get(k, f"a {k}") for k in kinds))
    nullable = " (or null)" if "<class 'NoneType'>" in body else ""
    return f"{key}={value} must be {described}{nullable}"


def _missing(names: str, args: list[str]) -> str:
    """What to give when a required key (the data module) is missing."""
    given = [a for a in args if a.startswith("-")]
    if not any(a in ("-c", "--config") or a.startswith(("--config=", "--model")) for a in given):
        return ("nothing to calibrate: give --config FILE (a model such as "
                "configs/models/resnet20.yaml, then a recipe such as "
                "configs/recipes/attnround.yaml), or the model (--model.arch NAME or "
                "--model.net.class_path CLASS) and the data (--data CLASS); "
                "'attnround-pl calibrate --help' lists every option")
    if names.strip() == "data":
        return ("no data module: give --data CLASS (attnround_pl.data.FashionMNISTDataModule, "
                "attnround_pl.data.ImageFolderDataModule or your LightningDataModule) or a "
                "--config that sets data")
    return f"missing required settings: {names.strip()}"


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _config_files(args: list[str]) -> list[str]:
    """The ``--config`` values of ``args``, in order."""
    found = []
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
        elif arg in ("--config", "-c") and i + 1 < len(args):
            found.append(args[i + 1])
    return found


def _bad_config(args: list[str]) -> str | None:
    """One line for the first ``--config`` file of ``args`` that is not a YAML mapping."""
    from .early_check import ConfigFileError, read_config_file

    for value in _config_files(args):
        if Path(value).is_file():
            try:
                read_config_file(value)
            except ConfigFileError as exc:
                return str(exc)
    return None


def parse_error_message(message: str, parser: Any, args: list[str]) -> str:
    """jsonargparse's (often multi-line) parse error as the one line a user acts on."""
    text = message.strip()
    if text.startswith(("Problems parsing config", "Unexpected config")):
        bad = _bad_config(args)
        if bad is not None:
            return bad
    if match := re.match(r"unrecognized arguments: (.*)", text, re.S):
        first = match.group(1).split()[0]
        if not first.startswith("-"):
            return (f"unexpected argument {first!r}: calibrate takes options only "
                    "(--config FILE, --quant.w_bits 3, ...)")
        return unknown_key(parser, first.split("=")[0].lstrip("-"), option=True)
    if match := re.match(r"Group '([^']+)' does not accept option '([^']+)'", text):
        return unknown_key(parser, f"{match.group(1)}.{match.group(2)}")
    if match := re.match(r"Option '([^']+)' is not accepted", text):
        return unknown_key(parser, match.group(1))
    if match := re.match(r"the following arguments are required: (.*)", text):
        return _missing(match.group(1), args)
    if match := re.match(r"argument (--\S+): expected one argument", text):
        option = match.group(1)
        return (f"{option} needs a value (write one that starts with '-' as "
                f"{option}=VALUE)")
    match = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if match is None:
        return _one_line(text)
    key, body = match.groups()
    if problem := re.search(r"Problem with given class_path '([^']+)':\s*\n(.*)", body, re.S):
        class_path, reason = problem.groups()
        if option := re.match(r"\s*Option '([^']+)' is not accepted", reason):
            return _unknown_init_arg(class_path, key, option.group(1))
        if inner := re.match(r'\s*Parser key "([^"]+)":\s*(.*)', reason, re.S):
            nested = f"{key}.init_args.{inner.group(1)}"
            wrong = _wrong_type(nested, inner.group(2))
            return wrong or f"{nested}: {_one_line(inner.group(2))}"
        return f"{key}: class_path {class_path!r}: {reason.strip().splitlines()[0].strip()}"
    if missing := re.match(r"File does not exist: '(.*)'", body):
        return f"--{key} file {missing.group(1)!r} does not exist"
    return _wrong_type(key, body) or f"{key}: {_one_line(body)}"


# ---- calibrate ----


def _imported(class_path: str) -> type:
    """The class at a class path jsonargparse has already resolved."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.cache
def calibrate_cli_class() -> type[LightningCLI]:
    """``CalibrateCLI``, defined on first use: Lightning is imported by the commands that run
    it, not by ``attnround-pl --help``."""
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from .calib.settings import ReconConfig, RunConfig
    from .data import ImageFolderDataModule, check_image_settings, check_loader_settings
    from .mixed.config import MixedConfig
    from .quant import QuantConfig

    class CalibrateCLI(LightningCLI):
        def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            # Ours first: --help lists them after --config and --seed_everything, before the
            # Trainer's fifty options.
            parser.add_class_arguments(QuantConfig, "quant")
            parser.add_class_arguments(MixedConfig, "mixed")
            parser.add_class_arguments(ReconConfig, "recon")
            parser.add_class_arguments(RunConfig, "run")
            super().add_core_arguments_to_parser(parser)

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.link_arguments("seed_everything", "quant.seed")
            # --help would list every nn.Module subclass loaded (hundreds of lines) as
            # model.net's "known subclasses"; the option's own help says what it takes.
            for action in parser._actions:
                if action.dest == "model.net" and hasattr(action, "extra_help"):
                    action.extra_help = lambda: ""

        def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
            try:
                super().parse_arguments(parser, args)
            except argparse.ArgumentError as exc:
                message = parse_error_message(str(exc), parser, sys.argv[1:])
                raise ArgumentsError(message) from exc

        def before_instantiate_classes(self) -> None:
            # Bad settings fail here, before any model or data is loaded.
            QuantConfig(**self.config["quant"].as_dict()).validate()
            MixedConfig(**self.config["mixed"].as_dict()).validate()
            ReconConfig(**self.config["recon"].as_dict()).validate()
            RunConfig(**self.config["run"].as_dict()).validate()
            # The data module's own checks would surface wrapped in jsonargparse's usage text.
            # A user's data module need not take these arguments: a missing one is not checked.
            data = self.config["data"].get("init_args") if self.config["data"] else None
            if data is not None:
                check_loader_settings(
                    data.get("calib_size", 1), data.get("batch_size", 1),
                    data.get("num_workers", 0),
                )
                if issubclass(_imported(self.config["data"]["class_path"]), ImageFolderDataModule):
                    check_image_settings(
                        channels=data.get("channels"),
                        crop=data.get("crop"),
                        resize=data.get("resize"),
                        mean=data.get("mean"),
                        std=data.get("std"),
                    )
                if "seed" in data:  # one seed seeds everything (a user's module may have none)
                    data["seed"] = self.config["seed_everything"]

    return CalibrateCLI


def build_cli(args: list[str]) -> LightningCLI:
    """The parsed and checked calibrate command line, its model and data module built."""
    import lightning.pytorch as pl

    from .calib.classifier import FloatModel
    from .calib.pipeline import quiet_lightning

    quiet_lightning()
    # LightningCLI reads sys.argv; hand it exactly the arguments of this subcommand.
    saved = sys.argv
    sys.argv = ["attnround-pl calibrate", *args]
    try:
        return calibrate_cli_class()(
            FloatModel,
            pl.LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=None,
            parser_kwargs=dict(PARSER_KWARGS),
            run=False,
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved


def trainer_kwargs(cli: LightningCLI) -> dict:
    return {k: v for k, v in cli.config["trainer"].as_dict().items() if v is not None}


def model_source(cli: LightningCLI) -> ModelSource:
    """The zoo name, or the class path and init args the user's ``--model.net`` was built from."""
    from .models.source import ModelSource

    net = cli.config["model"].get("net")
    if net is None:
        return cli.model.source
    init_args = net.get("init_args")
    return ModelSource(
        "import", net["class_path"], init_args.as_dict() if init_args is not None else {}
    )


def cmd_calibrate(args: list[str]) -> int:
    check_settings(args)  # a refused setting of ours answers before Lightning is imported
    cli = build_cli(args)
    from .calib.pipeline import calibrate
    from .calib.settings import ReconConfig, RunConfig
    from .mixed.config import MixedConfig
    from .quant import QuantConfig

    config_text = cli.parser.dump(cli.config, skip_none=False)
    cfg = cli.config
    calibrate(
        cli.model, cli.datamodule, QuantConfig(**cfg["quant"].as_dict()),
        ReconConfig(**cfg["recon"].as_dict()), RunConfig(**cfg["run"].as_dict()),
        trainer_kwargs=trainer_kwargs(cli), config_text=config_text, source=model_source(cli),
        mixed=MixedConfig(**cfg["mixed"].as_dict()),
    )
    return 0


# ---- evaluate, export ----


def _run_args(command: str, args: list[str], *extra: tuple[str, dict]) -> tuple[Any, list[str]]:
    """``--run <folder>`` (and the command's own options); the rest override the run's config."""
    parser = argparse.ArgumentParser(
        prog=f"attnround-pl {command}",
        epilog="Other options override the run's config.yaml, e.g. --data.init_args.root DIR.",
    )
    parser.add_argument("--run", required=True, help="a finished calibration's run folder")
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    return parser.parse_known_args(args)


def current_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run folder's config.yaml (as a dict) in this version's keys: the quant keys of an
    earlier version moved where they are now (``QuantConfig.from_dict``), ``quant.mixed`` to
    the ``mixed`` section. A config without old keys is returned as it is."""
    from .quant.config import MOVED_KEYS, QuantConfig

    quant = config.get("quant")
    old = [k for k in MOVED_KEYS if k.startswith("quant.")]
    if not isinstance(quant, dict) or not any(k.split(".", 1)[1] in quant for k in old):
        return config
    mixed = quant.get("mixed")
    config = {**config, "quant": QuantConfig.from_dict(quant).to_dict()}
    if isinstance(mixed, dict) and config.get("mixed") is None:
        config["mixed"] = mixed
    return config


def _run_cli(run_dir: Path, overrides: list[str], float_weights: bool = False) -> LightningCLI:
    """The run's config.yaml plus the user's overrides (data and trainer options); the float
    model's weights are loaded only when asked (evaluate compares with them). A config.yaml of
    an earlier version is read in this version's keys (``current_config``)."""
    import yaml

    from .calib.run_folder import CONFIG

    weights = [] if float_weights else ["--model.weights", "null", "--model.checkpoint", "null"]
    config: Any = str(run_dir / CONFIG)
    try:
        saved = yaml.safe_load((run_dir / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if isinstance(saved, dict) and current_config(saved) is not saved:
        config = yaml.safe_dump(current_config(saved), sort_keys=False)
    return build_cli(["--config", config, *weights, *overrides])


def cmd_evaluate(args: list[str]) -> int:
    opts, overrides = _run_args("evaluate", args)
    from .calib.evaluation import evaluate_model
    from .calib.run_folder import CHECKPOINT, build_float, check_run_folder
    from .data import calibration_images, evaluation_batches
    from .export.checkpoint import load_quantized

    run_dir = check_run_folder(opts.run)
    cli = _run_cli(run_dir, overrides, float_weights=True)
    qmodel, _ = load_quantized(run_dir / CHECKPOINT, build_float)
    data = cli.datamodule
    data.prepare_data()
    data.setup("test")
    batches = evaluation_batches(data)
    if batches is None:  # no evaluation split: fidelity on the calibration images
        batches = list(calibration_images(data).split(256))
    result = evaluate_model(qmodel, batches, trainer_kwargs(cli), reference=cli.model.net)
    summary = {"run": str(run_dir), "quant_top1": result.top1}
    if result.top5 is not None:  # more than five classes
        summary["quant_top5"] = result.top5
    summary |= {"quant_fidelity": result.fidelity_dict(), "images": result.images}
    print(json.dumps(summary))
    return 0



def cmd_export(args: list[str]) -> int:
    opts, overrides = _run_args(
        "export", args,
        ("--format", {"required": True, "help": f"one of: {', '.join(FORMATS)}"}),
        ("--out", {"default": None, "help": "output file (default: in the run folder)"}),
        ("--opset", {"type": int, "default": None,
                     "help": "ONNX opset, 18 to 21 (default: 21 when a grid has 4 bits or "
                             "fewer, INT4/UINT4 codes; 18: 8-bit types for older runtimes)"}),
    )
    from rich.console import Console

    from .calib.export_job import check_format, export_run, export_table
    from .calib.run_folder import check_run_folder
    from .calib.settings import RunConfig

    check_format(opts.format)
    if opts.opset is not None:
        if opts.format != "onnx":
            raise SettingError(f"--opset is an ONNX setting; --format {opts.format} has none")
        RunConfig(onnx_opset=opts.opset).validate()
    run_dir = check_run_folder(opts.run)
    cli = _run_cli(run_dir, overrides)
    result = export_run(run_dir, opts.format, cli.datamodule, opts.out, opset=opts.opset)
    Console().print(export_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Lightning 2.6 still calls jsonargparse APIs deprecated in 4.49; users cannot act on that.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"calibrate": cmd_calibrate, "evaluate": cmd_evaluate, "export": cmd_export}
    if command not in commands:
        print(f"attnround-pl: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if os.getcwd() not in sys.path:  # a user's --model.net / --data class path, as python -m
        sys.path.insert(0, os.getcwd())
    from .calib.interrupt import CalibrationInterrupted

    try:
        return commands[command](rest)
    except CalibrationInterrupted as exc:  # Ctrl-C or SIGTERM during a calibration
        print(f"attnround-pl {command}: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:  # Ctrl-C anywhere else: nothing is half-written (atomic files)
        print(f"attnround-pl {command}: stopped by Ctrl-C", file=sys.stderr)
        return 130
    except peer_rank_errors():
        return 2  # another DDP rank failed and printed the error; this one only stops
    except user_errors() as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"attnround-pl {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        close_process_group()  # DDP: before interpreter shutdown (see its docstring)


if __name__ == "__main__":
    sys.exit(main())
