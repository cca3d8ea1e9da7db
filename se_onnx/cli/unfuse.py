"""`se-onnx unfuse`: inline a model's se_onnx.SqueezeExcitation function nodes back into plain ops."""

from __future__ import annotations

import argparse

from se_onnx.cli._common import (
    add_rewrite_arguments,
    check_output_path,
    count,
    print_json,
    refuse_nothing_to_do,
)
from se_onnx.ir.model_io import load_model, save_model
from se_onnx.ir.se_block import FUNCTION_NAME
from se_onnx.passes.unfuse import unfuse_se


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "unfuse",
        help="inline SqueezeExcitation function nodes back into plain ops",
        description=f"Inline every se_onnx.{FUNCTION_NAME} node that `se-onnx fuse --form function` "
        "wrote, and drop the functions and the se_onnx opset import.",
    )
    add_rewrite_arguments(parser, "where to write the unfused model")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.model, args.output, args.in_place)
    model, report = unfuse_se(load_model(args.model))
    refuse_nothing_to_do(report)
    save_model(model, args.output)
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"{count(report.blocks_inlined, FUNCTION_NAME + ' node')} inlined, written to {args.output}")
    return 0
