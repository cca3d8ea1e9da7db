"""The `se-onnx` command line: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from se_onnx.cli._deferred_imports import defer_unused_imports
from se_onnx.errors import OptionError, SeOnnxError

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


def build_parser(commands: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The parser with the subcommands of `commands` (module names; by default all of them)."""
    parser = argparse.ArgumentParser(
        prog="se-onnx",
        description="Add, find, fuse and strip Squeeze-and-Excitation blocks in ONNX conv models; "
        "verify and benchmark them; serve ONNX models over the Open Inference Protocol.",
    )
    parser.add_argument("--version", action=_Version, help="print se-onnx's version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in commands:
        importlib.import_module(f"se_onnx.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; without `argv`, the process's own command line, with the imports no
    command needs put off (a caller passing `argv` keeps the imports it has)."""
    if argv is None:
        defer_unused_imports()
        argv = sys.argv[1:]
    parser = build_parser(_commands_for(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # told by the command's own parser, whose usage line is the one that helps
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        status = args.run(args) or 0
        sys.stdout.flush()  # a reader gone before the last of the output shows here, not at exit
        return status
    except BrokenPipeError:
        # The reader closed the pipe (`se-onnx inspect --json | head`): stop quietly, as a tool
        # killed by SIGPIPE does, and exit 141 (128 + SIGPIPE) as the shell would report for it.
        # stdout goes to devnull so that the interpreter's final flush does not fail once more.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a file (a caller's buffer)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OptionError as error:  # the library names the option, the command line its flag
        print(f"{_error_prefix()}{error.flag} {error.problem}", file=sys.stderr)
        return 2
    except SeOnnxError as error:
        print(f"{_error_prefix()}{error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file the command itself opens: unreadable, no permission, disk full
        where = f"{error.filename}: " if error.filename else ""
        print(f"{_error_prefix()}{where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _error_prefix() -> str:
    """ "se-onnx: error: ", naming the process under torchrun, where every rank writes to one terminal."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and world is not None and world != "1":
        return f"se-onnx: error (rank {rank} of {world}): "
    return "se-onnx: error: "


def _commands_for(argv: Sequence[str]) -> Sequence[str]:
    """Only the module of the command that `argv` names, when it names one: each command module
    imports what its command needs (onnx-ir, ONNX Runtime, the server), and a process that runs
    one command should not pay for importing every other. Anything else (no command, an option
    first, a typo) gets every command, for argparse's help and its error message."""
    module = argv[0].replace("-", "_") if argv else ""
    return (module,) if module in COMMAND_MODULES else COMMAND_MODULES


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return action.choices[command]


class _Version(argparse.Action):
    """--version: the installed package's version, read only when asked for (package metadata is
    slow to import, and every command would pay for it)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("se-onnx")
        except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
            number = "unknown (not installed)"
        print(f"se-onnx {number}")
        parser.exit()
