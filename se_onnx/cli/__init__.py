"""The `se-onnx` command line: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys

from se_onnx.errors import SeOnnxError

# Each module defines `register(subparsers)`, which adds its parser with `run` as its default.
COMMAND_MODULES = (
    "insert",
    "inspect",
    "verify",
    "export_weights",
    "fuse",
    "unfuse",
    "strip",
    "bench",
    "train",
    "evaluate",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="se-onnx",
        description="Add, find, fuse and strip Squeeze-and-Excitation blocks in ONNX conv models; "
        "verify and benchmark them; serve ONNX models over the Open Inference Protocol.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"se_onnx.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except SeOnnxError as error:
        print(f"se-onnx: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file the command itself opens: unreadable, no permission, disk full
        where = f"{error.filename}: " if error.filename else ""
        print(f"se-onnx: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
