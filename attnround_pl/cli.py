"""``attnround-pl`` command line, on LightningCLI.

    attnround-pl calibrate --config configs/resnet20_w4a4.yaml [--quant.w_bits 3 ...]
    attnround-pl evaluate --run runs/<run folder>
    attnround-pl export --run runs/<run folder> --format onnx|state [--out FILE]

``calibrate`` takes every LightningCLI option: ``--print_config``, ``--model.*`` (FloatModel:
``--model.arch`` a zoo or torchvision name, or ``--model.net.class_path`` / ``init_args`` of
the user's own nn.Module or LightningModule), ``--data`` (any LightningDataModule: ours, or the
user's own, whose train_dataloader feeds calibration and val/test_dataloader evaluation),
``--trainer.*`` and our groups ``--quant.*``, ``--recon.*`` and ``--run.*``. One seed
(``--seed_everything``) seeds everything. Class paths resolve against the current folder and
PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# Lightning 2.6 still calls jsonargparse APIs deprecated in 4.49; users cannot act on that.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from rich.console import Console

from .calib import FloatModel, RunConfig, calibrate
from .calib.distributed import PeerRankError, close_process_group
from .calib.evaluation import evaluate_model
from .calib.export_job import FORMATS, check_format, export_run, export_table
from .calib.pipeline import quiet_lightning
from .calib.run_folder import CHECKPOINT, CONFIG, build_float, check_run_folder
from .calib.sequencer import ReconConfig
from .data import (
    ImageFolderDataModule,
    calibration_images,
    check_image_settings,
    check_loader_settings,
    evaluation_batches,
)
from .errors import InputError
from .models.source import ModelSource
from .quant import QuantConfig, load_quantized

USAGE = """usage: attnround-pl {calibrate,evaluate,export} ...

  calibrate   quantize a model with block reconstruction (LightningCLI: --config, --print_config)
  evaluate    top-1/top-5 of a finished run's quantized checkpoint (--run <run folder>)
  export      state file or ONNX QDQ model of a finished run, checked against PyTorch
              (--run <run folder> --format onnx|state [--out FILE])

'attnround-pl calibrate --help' lists every option."""

# Errors a user can cause by input: printed as one line, exit status 2.
# Lightning's MisconfigurationException: Trainer settings it refuses (``--trainer.devices 0``).
# Anything else is a bug and keeps its traceback; TRACEBACK_ENV=1 shows it for these too.
USER_ERRORS = (InputError, FileExistsError, FileNotFoundError, MisconfigurationException)
TRACEBACK_ENV = "ATTNROUND_PL_TRACEBACK"


def _imported(class_path: str) -> type:
    """The class at a class path jsonargparse has already resolved."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class CalibrateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(QuantConfig, "quant")
        parser.add_class_arguments(ReconConfig, "recon")
        parser.add_class_arguments(RunConfig, "run")
        parser.link_arguments("seed_everything", "quant.seed")

    def before_instantiate_classes(self) -> None:
        # Bad settings fail here, before any model or data is loaded.
        QuantConfig(**self.config["quant"].as_dict()).validate()
        ReconConfig(**self.config["recon"].as_dict()).validate()
        RunConfig(**self.config["run"].as_dict()).validate()
        # The data module's own checks would surface wrapped in jsonargparse's usage text.
        # A user's data module need not take these arguments: a missing one is not checked.
        data = self.config["data"].get("init_args") if self.config["data"] else None
        if data is not None:
            check_loader_settings(
                data.get("calib_size", 1), data.get("batch_size", 1), data.get("num_workers", 0)
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


def build_cli(args: list[str]) -> CalibrateCLI:
    # LightningCLI reads sys.argv; hand it exactly the arguments of this subcommand.
    saved = sys.argv
    sys.argv = ["attnround-pl calibrate", *args]
    try:
        return CalibrateCLI(
            FloatModel,
            pl.LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=None,
            run=False,
        )
    finally:
        sys.argv = saved


def trainer_kwargs(cli: CalibrateCLI) -> dict:
    return {k: v for k, v in cli.config["trainer"].as_dict().items() if v is not None}


def model_source(cli: CalibrateCLI) -> ModelSource:
    """The zoo name, or the class path and init args the user's ``--model.net`` was built from."""
    net = cli.config["model"].get("net")
    if net is None:
        return cli.model.source
    init_args = net.get("init_args")
    return ModelSource(
        "import", net["class_path"], init_args.as_dict() if init_args is not None else {}
    )


def cmd_calibrate(args: list[str]) -> int:
    cli = build_cli(args)
    config_text = cli.parser.dump(cli.config, skip_none=False)
    cfg = cli.config
    calibrate(
        cli.model, cli.datamodule, QuantConfig(**cfg["quant"].as_dict()),
        ReconConfig(**cfg["recon"].as_dict()), RunConfig(**cfg["run"].as_dict()),
        trainer_kwargs=trainer_kwargs(cli), config_text=config_text, source=model_source(cli),
    )  # fmt: skip
    return 0


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


def _run_cli(run_dir: Path, overrides: list[str], float_weights: bool = False) -> CalibrateCLI:
    """The run's config.yaml plus the user's overrides (data and trainer options); the float
    model's weights are loaded only when asked (evaluate compares with them)."""
    weights = [] if float_weights else ["--model.weights", "null", "--model.checkpoint", "null"]
    return build_cli(["--config", str(run_dir / CONFIG), *weights, *overrides])


def cmd_evaluate(args: list[str]) -> int:
    opts, overrides = _run_args("evaluate", args)
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
    summary = {
        "run": str(run_dir),
        "quant_top1": result.top1,
        "quant_top5": result.top5,
        "quant_fidelity": result.fidelity_dict(),
        "images": result.images,
    }
    print(json.dumps(summary))
    return 0


def cmd_export(args: list[str]) -> int:
    opts, overrides = _run_args(
        "export", args,
        ("--format", {"required": True, "help": f"one of: {', '.join(FORMATS)}"}),
        ("--out", {"default": None, "help": "output file (default: in the run folder)"}),
    )  # fmt: skip
    check_format(opts.format)
    run_dir = check_run_folder(opts.run)
    cli = _run_cli(run_dir, overrides)
    result = export_run(run_dir, opts.format, cli.datamodule, opts.out)
    Console().print(export_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"calibrate": cmd_calibrate, "evaluate": cmd_evaluate, "export": cmd_export}
    if command not in commands:
        print(f"attnround-pl: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    quiet_lightning()
    if os.getcwd() not in sys.path:  # a user's --model.net / --data class path, as python -m
        sys.path.insert(0, os.getcwd())
    try:
        return commands[command](rest)
    except PeerRankError:
        return 2  # another DDP rank failed and printed the error; this one only stops
    except USER_ERRORS as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"attnround-pl {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        close_process_group()  # DDP: before interpreter shutdown (see its docstring)


if __name__ == "__main__":
    sys.exit(main())
