"""`se-onnx insert`: add SE blocks to a model and write it atomically."""

from __future__ import annotations

import argparse
import sys

from se_onnx.cli._common import (
    add_rewrite_arguments,
    check_output_path,
    count,
    load_npz,
    print_json,
    print_table,
    refuse_nothing_to_do,
)
from se_onnx.ir.attention import CBAM_SPATIAL_KERNEL, KIND_NAMES, KINDS
from se_onnx.ir.model_io import load_model, save_model
from se_onnx.passes.insert import INITS, PLACEMENTS, InsertOptions, InsertSE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "insert",
        help="add SE blocks after conv layers",
        description="Add Squeeze-and-Excitation blocks (ReduceMean → Gemm → Relu → Gemm → Sigmoid → "
        "Mul) after conv layers. By default the gate starts at exactly 1 (2·σ(0)), so the model's outputs "
        "are unchanged until the blocks are trained, and gradients reach them. A conv's layer is followed through a "
        "Transpose to NHWC (tf2onnx), BatchNorm as a node or as Mul + Add, and QuantizeLinear/"
        "DequantizeLinear pairs: in an NHWC island the block is built channels-last, and in a QDQ model "
        "it runs in float and is requantized on its input's grid (for int8 SE blocks, insert into the "
        "float model and quantize after). The report says where each block sits.",
    )
    add_rewrite_arguments(parser, "where to write the model with SE blocks")
    placement = parser.add_argument_group("placement")
    placement.add_argument(
        "--where",
        choices=PLACEMENTS,
        default="auto",
        help="residual: on each residual branch before its Add (SENet), NHWC Adds included; conv: "
        "after every conv, past its BatchNorm and activation; auto (default): residual if the model "
        "has residual blocks, else conv",
    )
    placement.add_argument(
        "--nodes",
        nargs="+",
        default=(),
        metavar="NAME",
        help="only these convs: node names or regular expressions matching whole names; a conv "
        "in an If/Loop body also answers to its graph's path and name, e.g. pick.then_branch/conv "
        "(with --where auto, places after each chosen conv)",
    )
    placement.add_argument("--min-channels", type=int, default=1, help="skip convs with fewer output channels")
    placement.add_argument("--skip-depthwise", action="store_true", help="skip depthwise convs (group = channels)")
    kind = parser.add_argument_group("block kind")
    kind.add_argument(
        "--block",
        choices=KINDS,
        default="se",
        help="se (default): Squeeze-and-Excitation; eca: ECA (a 1-D conv across the pooled channels, no "
        "bottleneck); cbam: CBAM (channel attention from average and max pools through one shared MLP, then "
        "spatial attention from a k×k conv over the channel-wise mean and max); coord: coordinate attention "
        "(pooled along H and along W, a shared 1×1 conv, two gates). --ratio sets CBAM's MLP width and "
        "coordinate attention's hidden width (at least 8)",
    )
    kind.add_argument(
        "--eca-kernel",
        type=int,
        default=None,
        metavar="K",
        help="ECA's kernel, odd (default: the paper's |log2(C)/2 + 1/2| made odd, per conv)",
    )
    kind.add_argument(
        "--cbam-spatial-kernel",
        type=int,
        default=CBAM_SPATIAL_KERNEL,
        metavar="K",
        help=f"CBAM's spatial conv kernel, odd (default {CBAM_SPATIAL_KERNEL})",
    )
    width = parser.add_argument_group("squeeze width: max(--min-squeeze, round(C·ratio)), rounded to --divisor")
    width.add_argument("--ratio", type=float, default=0.25, help="squeeze ratio (default 0.25; SENet uses 1/16)")
    width.add_argument("--min-squeeze", type=int, default=1, help="smallest squeeze width (default 1)")
    width.add_argument("--divisor", type=int, default=None, help="round the width to a multiple of this (timm: 8)")
    init = parser.add_argument_group("weights")
    init.add_argument(
        "--init",
        choices=INITS,
        default="identity",
        help="identity (default): gate = 2·σ(0) = 1, outputs unchanged, trainable (se-onnx train); "
        "saturated: the plain block with gate = σ(20) = 1, outputs unchanged, one Mul fewer, but "
        "gradients vanish (for blocks you will never train; SE only); random: PyTorch's default init. "
        "Every kind's identity init zeroes the last layer before each gate and multiplies the gate by 2",
    )
    init.add_argument("--seed", type=int, default=0, help="seed for the random parts of the init (default 0)")
    init.add_argument(
        "--weights",
        metavar="FILE.npz",
        help="trained weights per block, as `se-onnx export-weights` writes them",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.model, args.output, args.in_place)
    options = InsertOptions(
        where=args.where,
        nodes=tuple(args.nodes),
        ratio=args.ratio,
        min_squeeze=args.min_squeeze,
        divisor=args.divisor,
        min_channels=args.min_channels,
        skip_depthwise=args.skip_depthwise,
        init=args.init,
        seed=args.seed,
        weights=load_npz(args.weights) if args.weights else None,
        block=args.block,
        eca_kernel=args.eca_kernel,
        cbam_spatial_kernel=args.cbam_spatial_kernel,
    )
    # In place: the command has no further use for the model as loaded, so it is not copied first.
    model = load_model(args.model)
    report = InsertSE(options)(model).report
    refuse_nothing_to_do(report)
    save_model(model, args.output)
    if args.json:
        print_json(report.to_dict())
        return 0
    if args.block == "se":
        rows = [(b.name, b.channels, b.squeeze_channels, b.position) for b in report.blocks]
        print_table(("after conv", "C", "squeeze", "where"), rows)
    else:  # the kind, and the width or kernel it has
        kind_rows = [
            (b.name, b.kind, b.channels, _dash(b.squeeze_channels), _dash(b.kernel), b.position) for b in report.blocks
        ]
        print_table(("after conv", "kind", "C", "hidden", "kernel", "where"), kind_rows)
    label = "SE block" if args.block == "se" else f"{KIND_NAMES[args.block]} block"
    print(
        f"\n{count(len(report.blocks), label)} ({report.placement} placement, opset {report.opset}, "
        f"{report.dtype}, +{count(report.parameters_added, 'parameter')}) written to {args.output}"
    )
    if report.skipped:
        print(f"{count(len(report.skipped), 'conv')} skipped (--json lists them with reasons)", file=sys.stderr)
    return 0


def _dash(value: int | None) -> int | str:
    return "-" if value is None else value
