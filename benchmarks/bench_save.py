"""Benchmarks `save_model`'s hand-built protobuf encoding against the supported one, on large weights.

`se_onnx.ir.model_io._encode` writes each large initializer's bytes straight from its tensor
after a header that onnx-ir serialized; the supported way is `ir.to_proto(model)
.SerializeToString()`, which copies every weight into the proto and again into the string. Both
are timed interleaved (the order alternating each round) as `save_model` runs them — encode, check
with onnx.checker, write — and as the encoding alone; the figure is the median of the run-by-run
ratios (supported / hand-built), with the medians of each.

Models: any ONNX files given (by default ResNet-18 from ../shared/models when it is there), and
models/build_samples.py's ResNet-50-sized model (100 MB of weights), built here.

    python benchmarks/bench_save.py                  # 20 rounds
    python benchmarks/bench_save.py path/to/resnet18.onnx --runs 10
    python benchmarks/bench_save.py --runs 3         # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx_ir as ir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import build_samples  # noqa: E402
from se_onnx import load_model, save_model  # noqa: E402
from se_onnx.ir import model_io  # noqa: E402

SHARED_RESNET18 = REPO.parent / "shared" / "models" / "resnet18.onnx"


def supported_encoding(model: ir.Model) -> list[bytes]:
    """What `_encode` stands in for: onnx-ir's proto, serialized by protobuf."""
    return [ir.to_proto(model).SerializeToString()]


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench(label: str, model: ir.Model, runs: int, folder: Path) -> dict:
    hand_built = model_io._encode
    path = folder / "model.onnx"

    def save(encode) -> float:
        model_io._encode = encode
        try:
            return _timed(lambda: save_model(model, path))
        finally:
            model_io._encode = hand_built

    cases = {
        "save": {"hand_built": lambda: save(hand_built), "supported": lambda: save(supported_encoding)},
        "encode": {
            "hand_built": lambda: _timed(lambda: hand_built(model)),
            "supported": lambda: _timed(lambda: supported_encoding(model)),
        },
    }
    row: dict = {"model": label, "weights_mb": round(model_io._weights_bytes(model) / 1e6, 1)}
    for case, actions in cases.items():
        times: dict[str, list[float]] = {"hand_built": [], "supported": []}
        for action in actions.values():  # warm-up: page cache, allocator
            action()
        for index in range(runs):
            order = list(actions) if index % 2 == 0 else list(reversed(actions))
            for name in order:
                times[name].append(actions[name]())
        ratios = [s / h for s, h in zip(times["supported"], times["hand_built"])]
        row[case] = {
            "hand_built_ms": round(statistics.median(times["hand_built"]) * 1e3, 1),
            "supported_ms": round(statistics.median(times["supported"]) * 1e3, 1),
            "ratio": round(statistics.median(ratios), 3),
        }
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = [SHARED_RESNET18] if SHARED_RESNET18.is_file() else []
    parser.add_argument("models", nargs="*", type=Path, default=default, help="more ONNX models to save")
    parser.add_argument("--runs", type=int, default=20, help="interleaved rounds (default 20)")
    args = parser.parse_args()
    models = {path.stem: load_model(path) for path in args.models}
    models["resnet50_sized"] = ir.from_proto(build_samples.resnet50_sized())
    with tempfile.TemporaryDirectory() as folder:
        for label, model in models.items():
            row = bench(label, model, args.runs, Path(folder))
            print(
                f"{row['model']} ({row['weights_mb']} MB of weights): "
                + "; ".join(
                    f"{case} hand-built {row[case]['hand_built_ms']} ms, supported {row[case]['supported_ms']} ms, "
                    f"supported/hand-built {row[case]['ratio']}×"
                    for case in ("save", "encode")
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
