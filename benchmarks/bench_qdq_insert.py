"""Benchmarks SE blocks in a model quantized in ONNX Runtime's QDQ format, on the CPU provider.

The float model (a sample of models/build_samples.py) is quantized with ONNX Runtime's
`quantize_static` (QDQ format, its defaults, calibrated on seeded inputs); then, each timed against
that QDQ model, interleaved (`se_onnx.runtime.fastest.measure_forms`: median of run-by-run ratios):

- ``insert``: `se-onnx insert` on the QDQ model: float SE blocks after a DequantizeLinear, each
  followed by a copy of the Q/DQ pair before it (what the pass writes);
- ``float_island``: the same blocks without that copy, so the int8 ops after each block read a
  float tensor (what inserting between a DequantizeLinear and the next QuantizeLinear alone gives);
- ``quantized_after``: `se-onnx insert` on the float model, then quantized (SE blocks in int8).

It also counts the QLinearConv and QLinearAdd nodes in the graph ONNX Runtime runs (its optimizer
fuses each DequantizeLinear → op → QuantizeLinear group into one): an op that reads a float
island's output stays in float.

    python benchmarks/bench_qdq_insert.py                        # resnet50_sized
    python benchmarks/bench_qdq_insert.py --sample resnet --runs 20 --warmup 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import build_samples  # noqa: E402
from models.builders import quantize_qdq  # noqa: E402
from se_onnx import InsertOptions, insert_se  # noqa: E402
from se_onnx.runtime.fastest import measure_forms  # noqa: E402

SAMPLES = {"resnet50_sized": build_samples.resnet50_sized, "resnet": build_samples.resnet_like}


def without_requantization(model: ir.Model) -> ir.Model:
    """`model` (from `insert_se` on a QDQ model) with each block's copied Q/DQ pair bypassed."""
    model = model.clone()
    for node in list(model.graph):
        if node.op_type == "DequantizeLinear" and "/se/dequantize" in node.name:
            quantize = node.inputs[0].producer()
            node.outputs[0].replace_all_uses_with(quantize.inputs[0])
            model.graph.remove([node, quantize], safe=True)
    return model


def int8_kernels(model: ir.Model) -> dict[str, int]:
    """How many QLinearConv and QLinearAdd nodes the graph that ONNX Runtime runs holds."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as directory:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(directory, "optimized.onnx"))
        options.log_severity_level = 3  # not the warning that the saved graph is machine-specific
        ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    return {op: ops.count(op) for op in ("QLinearConv", "QLinearAdd")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", choices=sorted(SAMPLES), default="resnet50_sized")
    parser.add_argument(
        "--where", choices=("residual", "conv"), default="residual", help="SE placement (default residual)"
    )
    parser.add_argument("--runs", type=int, default=100, help="interleaved timed runs of each model (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of each model first (default 5)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    args = parser.parse_args()

    float_model = (
        SAMPLES[args.sample](opset=17, batch=1) if args.sample == "resnet50_sized" else SAMPLES[args.sample](opset=17)
    )
    options = InsertOptions(where=args.where, init="random")
    qdq = ir.from_proto(quantize_qdq(float_model))
    inserted, report = insert_se(qdq, options)
    float_with_se, _ = insert_se(ir.from_proto(float_model), options)
    models = {
        "original": qdq,
        "insert": inserted,
        "float_island": without_requantization(inserted),
        "quantized_after": ir.from_proto(quantize_qdq(ir.to_proto(float_with_se))),
    }
    timings = measure_forms(models, runs=args.runs, warmup=args.warmup, batch=args.batch)
    rows = [
        {"model": t.form, "median_ms": round(t.median_ms, 3), "ratio": round(t.ratio, 4)} | int8_kernels(models[t.form])
        for t in timings
    ]
    print(
        json.dumps(
            {"sample": args.sample, "se_blocks": len(report.blocks), "where": args.where, "rows": rows}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
