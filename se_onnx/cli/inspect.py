"""`se-onnx inspect`: show a model's opsets, signature, conv layers, SE insertion sites and SE blocks."""

from __future__ import annotations

import argparse

from se_onnx.cli._common import count, print_blocks, print_json, print_table
from se_onnx.ir.model_io import load_model
from se_onnx.passes.inspect import ModelSummary, TensorSignature, inspect_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show conv layers, where SE can go, and the SE blocks a model has",
        description="Show a model's opsets, inputs and outputs, conv layers (channels, kernel, group), "
        "where `se-onnx insert` would place SE blocks, and the SE blocks the model already has, "
        "in the main graph and in every If/Loop/Scan body (a conv there is named by its graph's path).",
    )
    parser.add_argument("model", help="ONNX model")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summary = inspect_model(load_model(args.model))
    if args.json:
        print_json(summary.to_dict())
    else:
        _print_summary(args.model, summary)
    return 0


def _print_summary(path: str, summary: ModelSummary) -> None:
    opsets = ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in summary.opsets.items())
    print(
        f"{path}: IR version {summary.ir_version}, opsets {opsets}"
        + (f", from {summary.producer}" if summary.producer else "")
    )
    for label, values in (("input", summary.inputs), ("output", summary.outputs)):
        for value in values:
            print(f"  {label:6}  {value.name}  {value.dtype}  {_shape(value)}")
    print(f"\nConv layers: {len(summary.convs)}")
    if summary.convs:
        rows = [
            (
                c.name,
                c.in_channels,
                c.out_channels,
                "×".join(map(str, c.kernel)) if c.kernel else "?",
                c.group,
                "depthwise" if c.depthwise else "",
            )
            for c in summary.convs
        ]
        print_table(("name", "in", "out", "kernel", "group", ""), rows)
    residual, conv = summary.insertion_sites["residual"], summary.insertion_sites["conv"]
    print(
        f"\nSE can go: {count(len(residual), 'residual branch', 'residual branches')} (--where residual), "
        f"{count(len(conv), 'conv')} (--where conv)"
    )
    print(f"\nSE blocks: {len(summary.se_blocks)}")
    if summary.se_blocks:
        print_blocks([block.to_dict() for block in summary.se_blocks])
    if summary.se_near_misses:
        print(f"\nSE near-misses: {len(summary.se_near_misses)}")
        print_table(
            ("Mul", "failed at", "reason"), [(m.node, m.stage.name.lower(), m.reason) for m in summary.se_near_misses]
        )
    others = [block for block in summary.attention_blocks if block.kind != "se"]
    if others:
        print(f"\nOther attention blocks: {len(others)}")
        block_rows = [
            (
                b.kind,
                b.channels,
                b.details.get("squeeze_channels", "-"),
                b.details.get("kernel", "-"),
                len(b.nodes),
                b.output.name,
            )
            for b in others
        ]
        print_table(("kind", "C", "hidden", "kernel", "nodes", "output"), block_rows)
    misses = [m for m in summary.attention_near_misses if m.reason.split(":")[0] != "closest to SE"]
    if misses:
        print(f"\nAttention near-misses: {len(misses)}")
        print_table(("Mul", "failed at", "reason"), [(m.node, m.stage.name.lower(), m.reason) for m in misses])


def _shape(value: TensorSignature) -> str:
    if value.shape is None:
        return "shape unknown"
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in value.shape) + "]"
