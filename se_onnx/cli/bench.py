"""`se-onnx bench`: latency and throughput of one model, two models interleaved, or a model's SE blocks."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from se_onnx.cli._common import check_png_path, print_json, print_table
from se_onnx.errors import SeOnnxError
from se_onnx.passes.strip import STRIP_BLOCKS
from se_onnx.runtime.sessions import PROVIDERS

if TYPE_CHECKING:
    from se_onnx.runtime.bench import BenchReport
    from se_onnx.runtime.profile import SeCost


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time models in ONNX Runtime (one, two interleaved, or a model's SE blocks)",
        description="Time a model in ONNX Runtime: warm-up, then latency (median, p90, mean, min) and "
        "throughput. With two models, runs them interleaved (A B A B …) on the same seeded inputs and "
        "reports B/A pair by pair. --se-cost times a model against a copy with its SE blocks "
        "stripped, breaks the difference down by role and op type with ONNX Runtime's profiler "
        "(as many profiled runs, interleaved, differences taken run by run), and says whether the "
        "breakdown adds up to the measured difference or the difference is within noise.",
    )
    parser.add_argument("model_a", metavar="A", help="ONNX model")
    parser.add_argument("model_b", metavar="B", nargs="?", help="second model, timed against A on the same inputs")
    parser.add_argument(
        "--provider", choices=PROVIDERS, default="cpu", help="execution provider (default cpu; never falls back)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="size of symbolic batch dims (default: the model's, else 1)"
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per model first (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default 0: its choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument(
        "--se-cost",
        action="store_true",
        help="time A against A without its SE blocks (or those of --block), with a breakdown by role and op type",
    )
    parser.add_argument(
        "--block",
        choices=STRIP_BLOCKS,
        default="se",
        help="with --se-cost: the kind of block to cost, or all (default se)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="also write a comparison chart")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_png_path(args.plot)
    # Imported here: every se-onnx command builds this parser, and only bench needs the timing code.
    from se_onnx.runtime.bench import BenchOptions, benchmark
    from se_onnx.runtime.plots import plot_report
    from se_onnx.runtime.profile import se_cost

    options = BenchOptions(
        provider=args.provider,
        batch=args.batch,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    if args.se_cost:
        if args.model_b:
            raise SeOnnxError("--se-cost takes one model (it builds the stripped copy itself)")
        report = se_cost(args.model_a, options, args.block)
    else:
        report = benchmark([args.model_a, args.model_b] if args.model_b else [args.model_a], options)
    if args.plot:
        plot_report(report, args.plot)
    if args.json:
        print_json(report.to_dict())
    else:
        _print_report(report)
        if args.plot:
            print(f"\nchart written to {args.plot}")
    return 0


def _print_report(report: BenchReport) -> None:
    threads = report.threads or "auto"
    print(
        f"{report.provider}, batch {report.batch}, {report.runs} runs after {report.warmup} warm-up, "
        f"{threads} threads\n"
    )
    rows = [
        (
            m.name,
            f"{m.latency_ms.median:.3f}",
            f"{m.latency_ms.p90:.3f}",
            f"{m.latency_ms.mean:.3f}",
            f"{m.latency_ms.min:.3f}",
            f"{m.throughput:.1f}",
        )
        for m in report.models
    ]
    print_table(("model", "median ms", "p90 ms", "mean ms", "min ms", "items/s"), rows)
    if report.ratio is not None:
        r = report.ratio
        print(f"\nB/A run by run: median {r.median:.3f} (p10 {r.p10:.3f}, p90 {r.p90:.3f})")
    if report.se_cost is not None:
        _print_se_cost(report.se_cost)


def _print_se_cost(cost: SeCost) -> None:
    ms = cost.ms_per_batch
    print(
        f"\n{_blocks_text(cost)} cost ×{cost.ratio.median:.3f} "
        f"(p10 {cost.ratio.p10:.3f}, p90 {cost.ratio.p90:.3f}), "
        f"{ms.median:+.3f} ms per batch (95 % interval {ms.ci_low:+.3f} to {ms.ci_high:+.3f}; "
        f"single runs p10 {ms.p10:+.3f}, p90 {ms.p90:+.3f})"
    )
    if cost.within_noise:
        print("within noise: the runs cannot tell the SE model from its stripped copy, and neither can the breakdown")
    print(
        f"\ntime by role and op type, ms per batch (ONNX Runtime profiler, {cost.profiled_runs} runs per model, "
        "interleaved; "
        "medians, the difference run by run; ~ marks a difference within noise):"
    )
    print_table(
        ("role", "op type", "SE model", "stripped", "difference", "p10", "p90", "noise"),
        [
            (
                op.role,
                op.op_type or "-",
                f"{op.se_ms:.3f}",
                f"{op.stripped_ms:.3f}",
                f"{op.diff_ms:+.3f}",
                f"{op.diff.p10:+.3f}",
                f"{op.diff.p90:+.3f}",
                "~" if op.diff.within_noise else "",
            )
            for op in cost.ops
        ],
    )
    profiled = cost.profiled_ms_per_batch.median
    verdict = (
        f"adds up: within ±{cost.tolerance_ms:.3f} ms"
        if cost.adds_up
        else f"does not add up: more than ±{cost.tolerance_ms:.3f} ms off"
    )
    print(
        f"\nthe differences sum to {cost.accounted_ms:+.3f} ms against the measured {ms.median:+.3f} ms, "
        "so the breakdown "
        f"{verdict} (the two medians' 95 % intervals); the profiled runs differ by {profiled:+.3f} ms"
    )
    if not cost.adds_up and profiled - ms.median > cost.tolerance_ms:
        print(
            "the profiler's own cost per node is most of the gap (a model this small runs little else): "
            "read the rows as shares, or profile a larger --batch"
        )


def _blocks_text(cost: SeCost) -> str:
    """'2 SE blocks', or '3 blocks (2 SE, 1 ECA)' when the cost covers several kinds."""
    from se_onnx.ir.attention import KIND_NAMES

    if len(cost.kinds) == 1:
        ((kind, count),) = cost.kinds.items()
        return f"{count} {KIND_NAMES[kind]} block{'s' if count != 1 else ''}"
    kinds = ", ".join(f"{count} {KIND_NAMES[kind]}" for kind, count in sorted(cost.kinds.items()))
    return f"{cost.blocks} blocks ({kinds})"
