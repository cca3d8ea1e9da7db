"""`se-onnx evaluate`: accuracy and latency of a classifier in ONNX Runtime, or several side by side."""

from __future__ import annotations

import argparse

from se_onnx.cli._common import check_png_path, print_json, print_table
from se_onnx.cli.train import add_data_arguments, check_image_support, image_options
from se_onnx.errors import SeOnnxError
from se_onnx.ir.model_io import load_model
from se_onnx.runtime.datasets import ClassifierSignature, load_dataset
from se_onnx.runtime.sessions import PROVIDERS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy, latency, parameters and FLOPs of a classifier (ONNX Runtime)",
        description="Score a classifier on labelled data in ONNX Runtime (no PyTorch needed): top-1 and "
        "top-5 accuracy (top-k with k = min(5, classes)), mean cross-entropy, median single-sample "
        "latency, parameters and FLOPs per sample. With --compare, other models (the same model with SE, "
        "ECA, CBAM or coordinate attention blocks, say) on the same data, all timed interleaved, each "
        "against the first, as a table, JSON and PNG.",
    )
    parser.add_argument("model", help="the ONNX classifier")
    add_data_arguments(parser)
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="MODEL",
        help="models to report side by side with the first (A): B, C, … each against A",
    )
    parser.add_argument(
        "--provider", choices=tuple(PROVIDERS), default="cpu", help="ONNX Runtime provider (default cpu)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="samples per run when scoring (default 64)")
    parser.add_argument("--runs", type=int, default=100, help="timed single-sample runs per model (default 100)")
    parser.add_argument("--plot", metavar="FILE.png", help="with --compare: write the side-by-side figure as a PNG")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.plot and not args.compare:
        raise SeOnnxError("--plot draws a comparison; pass --compare MODEL [MODEL …]")
    check_png_path(args.plot)
    check_image_support(args.data)
    images = image_options(args)
    from se_onnx.runtime.evaluate import (  # only when evaluating
        compare_models,
        evaluate_model,
    )
    from se_onnx.runtime.plots import plot_comparison

    signature = ClassifierSignature.of(load_model(args.model))
    data = load_dataset(args.data, signature, images)
    settings = dict(provider=args.provider, batch_size=args.batch_size, latency_runs=args.runs)
    if not args.compare:
        evaluation = evaluate_model(args.model, data, **settings)
        if args.json:
            print_json(evaluation.to_dict())
        else:
            print_table(_HEADERS, [_row(evaluation)])
        return 0
    for other in args.compare:
        _check_same_signature(signature, ClassifierSignature.of(load_model(other)), args.model, other)
    comparison = compare_models(args.model, args.compare, data, **settings)
    if args.plot:
        plot_comparison(comparison, args.plot)
    if args.json:
        print_json(comparison.to_dict())
        return 0
    labels = [chr(ord("A") + index) for index in range(len(comparison.evaluations))]
    print_table(("", *_HEADERS), [(label, *_row(e)) for label, e in zip(labels, comparison.evaluations)])
    print()
    for index, label in enumerate(labels[1:], start=1):
        difference = comparison.difference(index)
        print(
            f"{label} − A: top-1 {100 * difference['top1']:+.2f} points, top-5 {100 * difference['top5']:+.2f} "
            f"points, {difference['parameters']:+,} parameters, {difference['flops']:+,} FLOPs; latency {label}/A "
            f"{difference['latency_ratio']:.3f} "
            f"(p10–p90 {difference['latency_ratio_p10']:.3f}–{difference['latency_ratio_p90']:.3f}, "
            "run by run, interleaved)"
        )
    return 0


def _check_same_signature(a: ClassifierSignature, b: ClassifierSignature, path_a: str, path_b: str) -> None:
    """B is scored on A's data: it must take the same input and score the same classes."""
    fits = len(a.input_shape) == len(b.input_shape) and all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a.input_shape, b.input_shape)
    )
    if not fits:
        raise SeOnnxError(
            f"--compare: {path_b} takes input [N, {_shown(b.input_shape)}], {path_a} [N, {_shown(a.input_shape)}]; "
            "compare two models of the same input"
        )
    if a.classes != b.classes:
        raise SeOnnxError(
            f"--compare: {path_b} scores {b.classes} classes, {path_a} {a.classes}; "
            "compare two models of the same classes"
        )


def _shown(shape) -> str:
    return ", ".join(str(d) if isinstance(d, int) else "?" for d in shape)


_HEADERS = ("model", "samples", "top-1", "top-5", "loss", "latency ms", "parameters", "FLOPs")


def _row(evaluation) -> tuple:
    return (
        evaluation.model,
        evaluation.samples,
        f"{evaluation.top1:.4f}",
        f"{evaluation.top5:.4f}",
        f"{evaluation.loss:.4f}",
        f"{evaluation.latency_ms:.3f}",
        evaluation.parameters,
        evaluation.flops,
    )
