"""Benchmarks the SE forms of `se-onnx fuse` against each model as given, in ONNX Runtime on the CPU.

For every model: how many SE blocks the detector finds, then the latency of each form relative to
the original — canonical, function, conv (GlobalAveragePool → 1×1 Conv form) and fastest (what
`fuse --form fastest` picks) — measured interleaved (original, canonical, … once each per round,
in a rotating order, `--runs` rounds after `--warmup`), the figure being the median of the
run-by-run ratios (`se_onnx.runtime.fastest.measure_forms`).

Models: the samples of models/build_samples.py (those without SE blocks get them from
`se-onnx insert --where conv --init random`, so their original is the canonical form), plus any
ONNX files given, such as the torchvision exports of benchmarks/export_torchvision.py:

    python benchmarks/bench_se_forms.py benchmarks/models/*.onnx
    python benchmarks/bench_se_forms.py --samples mobilenet_se --runs 2 --warmup 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx_ir as ir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import build_samples  # noqa: E402
from se_onnx import InsertOptions, find_se, fuse_se, insert_se, load_model  # noqa: E402
from se_onnx.errors import SeOnnxError  # noqa: E402
from se_onnx.runtime.fastest import fuse_fastest, measure_forms  # noqa: E402

SAMPLES = {
    "mobilenet_se": build_samples.mobilenet_se_like,
    "resnet": build_samples.resnet_like,
    "vgg": build_samples.vgg_like,
    "dwsep": build_samples.depthwise_separable,
    "conv1d": build_samples.conv1d_model,
    "conv3d": build_samples.conv3d_model,
    "resnet50_sized": build_samples.resnet50_sized,
}
FORMS = ("canonical", "function", "conv", "fastest")


def sample_model(name: str, opset: int) -> tuple[str, ir.Model]:
    model = ir.from_proto(SAMPLES[name](opset=opset))
    if find_se(model):
        return name, model
    with_se, _ = insert_se(model, InsertOptions(where="conv", init="random"))
    return f"{name}+se", with_se


def bench(label: str, model: ir.Model, args: argparse.Namespace) -> dict:
    blocks = find_se(model)
    row: dict = {"model": label, "se_blocks": len(blocks)}
    if not blocks:
        return row
    fastest, report = fuse_fastest(model, runs=args.runs, warmup=args.warmup, batch=args.batch)
    candidates = {
        "original": model,
        "canonical": fuse_se(model, "canonical")[0],
        "function": fuse_se(model, "function")[0],
        "conv": fuse_se(model, "conv")[0],
        "fastest": fastest,
    }
    timings = measure_forms(candidates, runs=args.runs, warmup=args.warmup, batch=args.batch)
    row["original_ms"] = timings[0].median_ms
    row["fastest_picks"] = report.written
    row.update({timing.form: round(timing.ratio, 4) for timing in timings[1:]})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="more ONNX models (torchvision exports, ...)")
    parser.add_argument(
        "--samples",
        nargs="*",
        default=list(SAMPLES),
        metavar="NAME",
        help=f"samples to build (default all: {', '.join(SAMPLES)}); none with --samples and no names",
    )
    parser.add_argument("--opset", type=int, default=17, help="opset of the built samples (default 17)")
    parser.add_argument("--runs", type=int, default=200, help="interleaved timed runs of each form (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs of each form first (default 10)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    unknown = sorted(set(args.samples) - set(SAMPLES))
    if unknown:
        parser.error(f"unknown samples {', '.join(unknown)}; choose from {', '.join(SAMPLES)}")

    rows = []
    for name in args.samples:
        rows.append(bench(*sample_model(name, args.opset), args))
        _progress(rows[-1], args)
    for path in args.models:
        try:
            rows.append(bench(Path(path).stem, load_model(path), args))
        except SeOnnxError as error:
            print(f"{path}: {error}", file=sys.stderr)
            continue
        _progress(rows[-1], args)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    timed = [row for row in rows if "fastest" in row]
    # Where fastest kept the original, its output is the original model itself: its measured ratio
    # is that of two identical models, the noise floor of the measurement, not a slowdown.
    slower = [row["model"] for row in timed if row["fastest_picks"] != "original" and row["fastest"] > 1.0]
    verdict = "yes" if not slower else f"no ({', '.join(slower)})"
    print(f"\nfastest ≤ 1.00× the original on every model: {verdict}")
    kept = [row["fastest"] for row in timed if row["fastest_picks"] == "original"]
    if kept:
        print(
            f"(noise floor: where the original was kept, the identical copy measured {min(kept):.3f}–{max(kept):.3f}×)"
        )
    return 0


def _progress(row: dict, args: argparse.Namespace) -> None:
    if args.json:
        return
    if "original_ms" not in row:
        print(f"{row['model']}: {row['se_blocks']} SE blocks")
        return
    ratios = "  ".join(f"{form} {row[form]:.3f}×" for form in FORMS)
    print(
        f"{row['model']}: {row['se_blocks']} SE blocks, original {row['original_ms']:.3f} ms; "
        f"{ratios}; fastest picked {row['fastest_picks']}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
