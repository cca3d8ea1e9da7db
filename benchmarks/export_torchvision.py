"""Exports torchvision's SE models (random weights) to ONNX for the SE-form benchmarks.

Needs torch and torchvision, which se-onnx itself does not depend on; install them in a separate
environment:

    python3 -m venv /tmp/tv-venv
    /tmp/tv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx
    /tmp/tv-venv/bin/python benchmarks/export_torchvision.py

Writes benchmarks/models/<name>.onnx (opset 17, dynamic batch, input [N, 3, 224, 224]).
Expected SE blocks: mobilenet_v3_small 9, efficientnet_b0 16, regnet_y_400mf 16.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision

MODELS = ("mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf")
OUTPUT_DIR = Path(__file__).resolve().parent / "models"


def export(name: str, output_dir: Path, opset: int) -> Path:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    sample = torch.randn(1, 3, 224, 224)
    path = output_dir / f"{name}.onnx"
    # The TorchScript exporter writes the requested opset directly (the dynamo exporter builds at
    # opset 18 and converts down), and keeps the SE modules as the plain ops a deployed model has.
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        dynamo=False,
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models or MODELS:
        print(export(name, args.output_dir, args.opset))


if __name__ == "__main__":
    main()
