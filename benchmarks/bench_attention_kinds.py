"""What each kind of attention block costs on a ResNet-50-sized model in ONNX Runtime on the CPU.

The model is built by models/build_samples.py (ResNet-50's layout: 53 convs, 16 bottleneck blocks,
BatchNorm folded, 224 × 224), or given as a file (a torchvision export, say). Each kind is inserted
on every residual branch as `se-onnx insert --block KIND --init random` would: SE at SENet's ratio
of 1/16, ECA with its adaptive kernel, CBAM at ratio 1/16 with a 7 × 7 spatial kernel, coordinate
attention at ratio 1/32 (the paper's). The base and the four variants run interleaved on the same
seeded inputs in a rotating order, `--runs` rounds after `--warmup`; each variant's figure is the
median of its run-by-run latency ratios to the base, with their p10–p90 spread.

    python benchmarks/bench_attention_kinds.py --runs 40 --threads 2
    python benchmarks/bench_attention_kinds.py path/to/resnet50.onnx --runs 40
    python benchmarks/bench_attention_kinds.py --runs 3 --warmup 1   # smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
from pathlib import Path

import onnx_ir as ir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import build_samples  # noqa: E402
from se_onnx import InsertOptions, insert_se, load_model  # noqa: E402
from se_onnx.runtime.sessions import make_session, model_bytes, random_inputs  # noqa: E402
from se_onnx.runtime.stats import pairwise_ratio  # noqa: E402
from se_onnx.runtime.timing import time_interleaved  # noqa: E402

# Each kind as its paper sets it up.
KINDS = {
    "SE (r = 1/16)": InsertOptions(block="se", ratio=1 / 16, init="random"),
    "ECA": InsertOptions(block="eca", init="random"),
    "CBAM (r = 1/16)": InsertOptions(block="cbam", ratio=1 / 16, init="random"),
    "CA (r = 1/32)": InsertOptions(block="coord", ratio=1 / 32, init="random"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="an ONNX model (default: the ResNet-50-sized sample)")
    parser.add_argument("--runs", type=int, default=40, help="timed rounds (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default 0: its choice)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    base = load_model(args.model) if args.model else ir.from_proto(build_samples.resnet50_sized())
    variants = {"base": (base, 0)}
    for label, options in KINDS.items():
        model, report = insert_se(base, options)
        variants[label] = (model, report.parameters_added)
        print(f"{label}: {len(report.blocks)} blocks, +{report.parameters_added:,} parameters", file=sys.stderr)
    sessions = {
        label: make_session(model_bytes(model), "cpu", intra_op_threads=args.threads, spinning=False)
        for label, (model, _) in variants.items()
    }
    feeds = random_inputs(sessions["base"], batch=args.batch)
    labels = list(sessions)
    series: dict[str, list[float]] = {label: [] for label in labels}
    # A rotating order, an equal share of the rounds each, so that no model always runs after another.
    for shift in range(len(labels)):
        order = labels[shift:] + labels[:shift]
        tasks = [functools.partial(sessions[label].run, None, feeds) for label in order]
        share = max(1, args.runs // len(labels) + (shift < args.runs % len(labels)))
        for label, seconds in zip(order, time_interleaved(tasks, runs=share, warmup=args.warmup if not shift else 0)):
            series[label].extend(seconds)

    rows = []
    for label in labels:
        ratio = pairwise_ratio(series["base"], series[label])
        rows.append(
            {
                "model": label,
                "parameters_added": variants[label][1],
                "median_ms": statistics.median(series[label]) * 1e3,
                "ratio": ratio.median,
                "ratio_p10": ratio.p10,
                "ratio_p90": ratio.p90,
            }
        )
    load = os.getloadavg()[0]
    print(f"\nONNX Runtime CPU, batch {args.batch}, {args.runs} rounds interleaved, load average {load:.1f}\n")
    print("| block | parameters added | median ms | latency over the base (p10–p90) |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['parameters_added']:+,} | {row['median_ms']:.2f} | "
            f"×{row['ratio']:.3f} ({row['ratio_p10']:.3f}–{row['ratio_p90']:.3f}) |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
