"""`se-onnx fuse`: rewrite every SE block of a model into one form (canonical, conv, function, fastest)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

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
from se_onnx.passes.fuse import FORMS, FuseReport, fuse_se
from se_onnx.runtime.sessions import PROVIDERS

if TYPE_CHECKING:
    from se_onnx.runtime.fastest import FastestReport  # imports ONNX Runtime


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fuse",
        help="rewrite a model's SE blocks into one form",
        description="Find every SE block (any exported form) and rewrite it. canonical: ReduceMean → "
        "Gemm → activation → Gemm → gate → Mul, biases folded; conv: GlobalAveragePool → 1×1 Conv → "
        "activation → 1×1 Conv → gate → Mul, torchvision's form; function: one se_onnx.SqueezeExcitation "
        "node per block, backed by a model-local function (undo with `se-onnx unfuse`); fastest: the "
        "form ONNX Runtime runs fastest on --provider, measured on this model (the original is kept "
        "unless another form is clearly faster). Outputs are unchanged up to float rounding.",
    )
    add_rewrite_arguments(parser, "where to write the fused model")
    parser.add_argument(
        "--form", choices=(*FORMS, "fastest"), default="canonical", help="the form to write (default canonical)"
    )
    timing = parser.add_argument_group("--form fastest: how candidate forms are timed")
    timing.add_argument("--provider", choices=PROVIDERS, default="cpu", help="execution provider (default cpu)")
    timing.add_argument("--runs", type=int, default=50, help="timed runs of each form, interleaved (default 50)")
    timing.add_argument("--warmup", type=int, default=5, help="untimed runs of each form first (default 5)")
    timing.add_argument("--batch", type=int, default=1, help="batch size of the timing inputs (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.model, args.output, args.in_place)
    model = load_model(args.model)
    timed: FastestReport | None = None
    report: FuseReport
    if args.form == "fastest":
        from se_onnx.runtime.fastest import (
            fuse_fastest,  # imports ONNX Runtime: only when timing
        )

        model, timed = fuse_fastest(model, provider=args.provider, runs=args.runs, warmup=args.warmup, batch=args.batch)
        report = timed
    else:
        model, report = fuse_se(model, args.form)
    refuse_nothing_to_do(report)
    save_model(model, args.output)
    if args.json:
        print_json(report.to_dict())
        return 0
    print_blocks(report.blocks)
    if timed is not None:
        print()
        rows = [(t.form, f"{t.median_ms:.3f}", f"{t.ratio:.3f}") for t in timed.timings]
        print_table(("form", f"ms ({timed.provider})", "× original"), rows)
    print(f"\n{count(len(report.blocks), 'SE block')}, {report.written} form written to {args.output}")
    return 0
