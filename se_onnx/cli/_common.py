"""Pieces that several subcommands share: output-path rules and printing reports."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from se_onnx.errors import SeOnnxError

if TYPE_CHECKING:
    from se_onnx.passes.base import Report


def add_rewrite_arguments(parser: argparse.ArgumentParser, output_help: str) -> None:
    """The arguments of every command that rewrites a model: MODEL, -o OUTPUT and --in-place."""
    parser.add_argument("model", help="input ONNX model")
    parser.add_argument("-o", "--output", required=True, help=output_help)
    parser.add_argument("--in-place", action="store_true", help="allow OUTPUT to be the input model")


def check_output_path(model_path: str, output: str, in_place: bool) -> None:
    """Refuse to overwrite the input model unless the user asked for it with --in-place."""
    same = Path(output).resolve() == Path(model_path).resolve()
    if same and not in_place:
        raise SeOnnxError(f"{output}: output is the input model; pass --in-place to overwrite it")


def refuse_nothing_to_do(report: Report) -> None:
    """A pass that found nothing to work on is the command's one-line error, and nothing is written."""
    if report.nothing_to_do:
        raise SeOnnxError(report.nothing_to_do)


def check_png_path(path: str | None) -> None:
    """Refuse a --plot file not named *.png, or matplotlib missing, before any work: the figure is
    always a PNG, and it is drawn last."""
    if path and not path.lower().endswith(".png"):
        raise SeOnnxError(f"--plot writes a PNG; name the file *.png, not {path!r}")
    if path:
        require("matplotlib", "plot", "--plot")


# The distributions of optional modules whose import name differs.
_DISTRIBUTIONS = {"PIL": "Pillow", "torch": "PyTorch"}


def require(module: str, extra: str, purpose: str) -> None:
    """Refuse before any work when an optional dependency is not installed, naming the extra that
    brings it: an hour of training should not end in an ImportError at the plotting step."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        found = False
    if not found:
        name = _DISTRIBUTIONS.get(module, module)
        raise SeOnnxError(f"{purpose} needs {name}, which is not installed: pip install 'se-onnx[{extra}]'")


def print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], file=None) -> None:
    """A plain left-aligned text table (numbers right-aligned) for terminals and logs."""
    file = file or sys.stdout
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]
    numeric = [all(_is_number(row[i]) for row in cells) and bool(cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(row, widths, numeric)
        ]
        return "  ".join(parts).rstrip()

    print(line(list(headers)), file=file)
    print(line(["-" * width for width in widths]), file=file)
    for row in cells:
        print(line(row), file=file)


def print_blocks(blocks: list[dict]) -> None:
    """The table of SE blocks that fuse, strip and inspect print (from `SEBlock.to_dict()`)."""
    rows: list[tuple[object, ...]] = []
    for block in blocks:
        gate = block["gate"]
        gate_text = gate["op_type"]
        if gate.get("alpha") is not None:
            gate_text += f"({gate['alpha']:.4g}, {gate['beta']:.4g})"
        if gate.get("gain", 1) != 1:
            gate_text = f"{gate['gain']:g}·{gate_text}"
        rows.append(
            (
                block["channels"],
                block["squeeze_channels"] or "-",
                block["activation"] or "- (1 layer)",
                gate_text,
                block["squeeze"] + "/" + "+".join(block["layers"]) + (", NHWC" if block["layout"] == "NHWC" else ""),
                len(block["nodes"]),
                block["output"],
                block["graph"],
            )
        )
    headers: tuple[str, ...] = ("C", "squeeze", "activation", "gate", "ops", "nodes", "output", "graph")
    if all(block["graph"] == "main" for block in blocks):  # the usual case: no column of "main"
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    print_table(headers, rows)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def count(number: int, noun: str, plural: str | None = None) -> str:
    """ "1 SE block", "2 SE blocks", "0 residual branches" (irregular plurals given)."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of a .npz file by key, with a one-line error for a missing or bad file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise SeOnnxError(f"{path}: cannot read arrays ({' '.join(str(error).split())})") from None
