"""``attnround-pl`` command line, on LightningCLI.

    attnround-pl calibrate --config configs/resnet20_w4a4.yaml [--quant.w_bits 3 ...]
    attnround-pl evaluate --run runs/<run folder>

``calibrate`` takes every LightningCLI option: ``--print_config``, ``--model.*`` (FloatModel),
``--data`` (a CalibrationDataModule subclass), ``--trainer.*`` and our groups ``--quant.*``,
``--recon.*`` and ``--run.*``. One seed (``--seed_everything``) seeds everything.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Lightning 2.6 still calls jsonargparse APIs deprecated in 4.49; users cannot act on that.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .calib import FloatModel, RunConfig, calibrate, evaluate
from .calib.pipeline import CHECKPOINT, REPORT, quiet_lightning
from .calib.sequencer import ReconConfig
from .data import CalibrationDataModule, DataError
from .models import ModelLoadError, build_model
from .quant import CheckpointError, QuantConfig, QuantConfigError, load_quantized

USAGE = """usage: attnround-pl {calibrate,evaluate} ...

  calibrate   quantize a model with block reconstruction (LightningCLI: --config, --print_config)
  evaluate    top-1/top-5 of a finished run's quantized checkpoint (--run <run folder>)

'attnround-pl calibrate --help' lists every option."""

# Errors a user can cause by input: printed as one line, exit status 2.
USER_ERRORS = (QuantConfigError, ModelLoadError, DataError, CheckpointError, FileExistsError,
               FileNotFoundError, ValueError)  # fmt: skip


class CalibrateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(QuantConfig, "quant")
        parser.add_class_arguments(ReconConfig, "recon")
        parser.add_class_arguments(RunConfig, "run")
        parser.link_arguments("seed_everything", "quant.seed")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    def before_instantiate_classes(self) -> None:
        # Bad settings fail here, before any model or data is loaded.
        QuantConfig(**self.config["quant"].as_dict()).validate()
        ReconConfig(**self.config["recon"].as_dict()).validate()


def build_cli(args: list[str]) -> CalibrateCLI:
    # LightningCLI reads sys.argv; hand it exactly the arguments of this subcommand.
    saved = sys.argv
    sys.argv = ["attnround-pl calibrate", *args]
    try:
        return CalibrateCLI(
            FloatModel,
            CalibrationDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=None,
            run=False,
        )
    finally:
        sys.argv = saved


def trainer_kwargs(cli: CalibrateCLI) -> dict:
    return {k: v for k, v in cli.config["trainer"].as_dict().items() if v is not None}


def cmd_calibrate(args: list[str]) -> int:
    cli = build_cli(args)
    config_text = cli.parser.dump(cli.config, skip_none=False)
    cfg = cli.config
    calibrate(
        cli.model, cli.datamodule, QuantConfig(**cfg["quant"].as_dict()),
        ReconConfig(**cfg["recon"].as_dict()), RunConfig(**cfg["run"].as_dict()),
        trainer_kwargs=trainer_kwargs(cli), config_text=config_text,
    )  # fmt: skip
    return 0


def cmd_evaluate(args: list[str]) -> int:
    if len(args) < 2 or args[0] != "--run":
        print("usage: attnround-pl evaluate --run <run folder> [calibrate options to override, "
              "e.g. --data.init_args.root ...]", file=sys.stderr)  # fmt: skip
        return 2
    run_dir = Path(args[1])
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.yaml: not a calibration run folder")
    if not (run_dir / REPORT).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {REPORT}: its calibration did not finish")
    cli = build_cli(["--config", str(config), "--model.weights", "null", *args[2:]])
    qmodel, payload = load_quantized(
        run_dir / CHECKPOINT,
        lambda meta: build_model(meta["arch"], weights=None, num_classes=meta["num_classes"]),
    )
    top1, top5 = evaluate(qmodel, cli.datamodule, trainer_kwargs(cli))
    print(json.dumps({"run": str(run_dir), "quant_top1": top1, "quant_top5": top5}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"calibrate": cmd_calibrate, "evaluate": cmd_evaluate}
    if command not in commands:
        print(f"attnround-pl: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    quiet_lightning()
    try:
        return commands[command](rest)
    except USER_ERRORS as exc:
        print(f"attnround-pl {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
