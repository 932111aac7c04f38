"""``attnround-pl`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data.fashion_mnist_files import DEFAULT_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnround-pl", description="Post-training quantization")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="quantize a small Fashion-MNIST CNN with the fixed roundings"
    )
    demo.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data folder")
    demo.add_argument("--epochs", type=int, default=2)
    demo.add_argument("--w-bits", type=int, nargs="+", default=[4, 3, 2])
    demo.add_argument("--a-bits", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from .quant import QuantConfigError

    try:
        if args.command == "demo":
            from . import demo as demo_module

            demo_module.run(args.root, args.epochs, tuple(args.w_bits), args.a_bits, args.seed)
    except (QuantConfigError, RuntimeError, FileNotFoundError) as exc:
        print(f"attnround-pl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
