"""`se-onnx export-weights`: write a model's SE weights to .npz for `insert --weights`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from se_onnx.cli._common import count, print_table
from se_onnx.ir.model_io import atomic_output, load_model
from se_onnx.passes.export_weights import export_weights


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-weights",
        help="write a model's SE (and other attention) weights to .npz",
        description="Write the fc1/fc2 weights and biases of every SE block to a .npz file, keyed "
        "'<conv>.fc1.weight' etc. by the conv each block follows (prefixed by its graph's path in an "
        "If/Loop body), in PyTorch's Linear layout (and '<conv>.gate.gain' for a gate with a gain, "
        "as the trainable identity init writes). "
        "ECA, CBAM and coordinate-attention blocks are written too, in their own layouts (see the insert "
        "guide). `se-onnx insert --weights FILE.npz` (with --block for the other kinds) puts them back "
        "into a model with the same convs.",
    )
    parser.add_argument("model", help="ONNX model with SE blocks")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.npz", help="where to write the weights")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    arrays = export_weights(load_model(args.model))
    output = Path(args.output)
    with atomic_output(output) as staging, open(staging, "wb") as file:
        # allow_pickle given (its default), so that no array's name can be taken for it.
        np.savez(file, allow_pickle=True, **arrays)
    blocks = sorted({key.rsplit(".", 2)[0] for key in arrays})
    if all(f"{b}.fc1.weight" in arrays and f"{b}.spatial.weight" not in arrays for b in blocks):
        print_table(("block", "C", "squeeze"), [(b, *arrays[f"{b}.fc1.weight"].shape[::-1]) for b in blocks])
        print(f"\nweights of {count(len(blocks), 'SE block')} written to {output}")
        return 0
    rows = [(b, ", ".join(key[len(b) + 1 :] for key in arrays if key.rsplit(".", 2)[0] == b)) for b in blocks]
    print_table(("block", "keys"), rows)
    print(f"\nweights of {count(len(blocks), 'block')} written to {output}")
    return 0
