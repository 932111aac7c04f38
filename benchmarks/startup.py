"""Start-up benchmark: how long the command line takes to answer before any work.

Runs each case in a fresh subprocess ``--repeat`` times (default 3) and prints, per case, the
median wall seconds and which heavy packages the process had imported when it answered (read
from ``python -X importtime``'s log of a separate, untimed run: the timed runs carry no
importtime overhead). The cases:

    help            attnround-pl --help
    evaluate-help   attnround-pl evaluate --help
    calibrate-help  attnround-pl calibrate --help
    refused         attnround-pl calibrate --config configs/models/resnet20.yaml
                        --config configs/recipes/attention.yaml --quant.w_bits 9

Run from the repository root (the refused case reads ``configs/``):

    .venv/bin/python benchmarks/startup.py              # every case, 3 runs each
    .venv/bin/python benchmarks/startup.py --repeat 5 --case help --case refused

Each case runs ``python -c 'from attnround_pl.cli import main; main()'`` with the interpreter
that runs this script, as the ``attnround-pl`` console script does. Times depend on the
machine's load and disk cache: the first run of a case warms the cache and is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES: dict[str, list[str]] = {
    "help": ["--help"],
    "evaluate-help": ["evaluate", "--help"],
    "calibrate-help": ["calibrate", "--help"],
    "refused": ["calibrate", "--config", "configs/models/resnet20.yaml", "--config",
                "configs/recipes/attention.yaml", "--quant.w_bits", "9"],
}

HEAVY = (
    "torch", "lightning", "torchvision", "torchmetrics", "onnx", "onnxruntime", "onnxscript",
    "matplotlib", "tensorboard", "rich", "sklearn", "scipy",
)

ENTRY = "import sys; from attnround_pl.cli import main; sys.exit(main(sys.argv[1:]))"


def command(args: list[str], importtime: bool = False) -> list[str]:
    return [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", ENTRY, *args]


def run_once(args: list[str]) -> tuple[float, int]:
    """Wall seconds of one fresh process, and its exit status."""
    start = time.perf_counter()
    proc = subprocess.run(command(args), cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy top-level packages one process imports (``-X importtime`` log on stderr)."""
    proc = subprocess.run(command(args, importtime=True), cwd=ROOT, capture_output=True,
                          text=True)
    found = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        if name.split(".")[0] in HEAVY:
            found.add(name.split(".")[0])
    return [name for name in HEAVY if name in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case")
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="run only these cases (repeatable; default: all)")
    opts = parser.parse_args(argv)
    print(f"| case | median s ({opts.repeat} runs) | exit | heavy modules imported |")
    print("|---|---|---|---|")
    for name in opts.case or list(CASES):
        args = CASES[name]
        run_once(args)  # warm the disk cache
        runs = [run_once(args) for _ in range(opts.repeat)]
        times = [seconds for seconds, _ in runs]
        heavy = ", ".join(heavy_imports(args)) or "none"
        print(f"| {name} | {statistics.median(times):.2f} | {runs[-1][1]} | {heavy} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
