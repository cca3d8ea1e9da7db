"""`se-onnx strip`: remove a model's SE blocks (each rescale becomes the identity), for ablations."""

from __future__ import annotations

import argparse

from se_onnx.cli._common import (
    add_rewrite_arguments,
    check_output_path,
    count,
    print_blocks,
    print_json,
    print_table,
    refuse_nothing_to_do,
)
from se_onnx.ir.model_io import load_model, save_model
from se_onnx.passes.strip import STRIP_BLOCKS, strip_se


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "strip",
        help="remove a model's SE blocks, for ablations",
        description="Remove every SE block: readers of a block's output read its input feature map "
        "instead, and nodes and initializers left unused are dropped. Graph inputs and outputs keep "
        "their names.",
    )
    add_rewrite_arguments(parser, "where to write the model without SE blocks")
    parser.add_argument(
        "--block",
        choices=STRIP_BLOCKS,
        default="se",
        help="which blocks: se (default), eca, cbam, coord, or all of them",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.model, args.output, args.in_place)
    model, report = strip_se(load_model(args.model), args.block)
    refuse_nothing_to_do(report)
    save_model(model, args.output)
    if args.json:
        print_json(report.to_dict())
        return 0
    if args.block == "se":
        print_blocks(report.blocks)
    else:
        print_table(
            ("kind", "C", "nodes", "output"),
            [(b["kind"], b["channels"], len(b["nodes"]), b["output"]) for b in report.blocks],
        )
    label = "SE block" if args.block == "se" else "attention block"
    print(
        f"\n{count(len(report.blocks), label)} removed ({count(report.nodes_removed, 'node')}, "
        f"{count(report.initializers_removed, 'initializer')}), written to {args.output}"
    )
    return 0
