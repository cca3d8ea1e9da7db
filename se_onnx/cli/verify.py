"""`se-onnx verify`: run two models on the same inputs and compare their outputs."""

from __future__ import annotations

import argparse

from se_onnx.cli._common import load_npz, print_json, print_table
from se_onnx.errors import SeOnnxError
from se_onnx.runtime.sessions import PROVIDERS
from se_onnx.runtime.verify import verify


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare two models' outputs in ONNX Runtime",
        description="Run models A and B on the same inputs (seeded random, or --inputs) and print the "
        "largest absolute and relative difference of each output. Exits 1 when an element differs "
        "by more than atol + rtol·|A|. Relative error counts only where |A| ≥ atol/rtol: an output "
        "nearer zero has no meaningful one (max rel -) and is judged by atol alone.",
    )
    parser.add_argument("model_a", metavar="A", help="reference model")
    parser.add_argument("model_b", metavar="B", help="model to check against A")
    parser.add_argument("--inputs", metavar="FILE.npz", help="inputs by name (default: seeded random)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    parser.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    parser.add_argument("--batch", type=int, default=1, help="size of symbolic batch dims (default 1)")
    parser.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="size of a named symbolic dim in the random inputs, e.g. --dim seq=128 (repeatable; "
        "default: 1 past the batch axis)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--provider", choices=PROVIDERS, default="cpu", help="execution provider (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    inputs = load_npz(args.inputs) if args.inputs else None
    result = verify(
        args.model_a,
        args.model_b,
        inputs=inputs,
        rtol=args.rtol,
        atol=args.atol,
        provider=args.provider,
        batch=args.batch,
        seed=args.seed,
        dims=_dims(args.dim),
    )
    if args.json:
        print_json(result.to_dict())
        return 0 if result.passed else 1
    rows = [
        (
            o.name,
            "×".join(map(str, o.shape)),
            f"{o.max_abs:.3g}",
            "-" if o.max_rel is None else f"{o.max_rel:.3g}",
            "ok" if o.within_tolerance else "FAIL",
        )
        for o in result.outputs
    ]
    print_table(("output", "shape", "max abs", "max rel", f"rtol={args.rtol:g} atol={args.atol:g}"), rows)
    near_zero = [o.name for o in result.outputs if o.judged_by == "atol"]
    if near_zero:
        floor = f"{args.atol / args.rtol:.3g}" if args.rtol > 0 else "0"
        print(
            f"\n{', '.join(near_zero)}: every |A| is below atol/rtol = {floor}, where relative error is not "
            f"meaningful (an output near zero); judged by the absolute tolerance alone, atol={args.atol:g}"
        )
    return 0 if result.passed else 1


def _dims(options: list[str]) -> dict[str, int]:
    """--dim NAME=SIZE options as {name: size}."""
    dims = {}
    for option in options:
        name, _, size = option.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise SeOnnxError(f"--dim takes NAME=SIZE with a positive size, e.g. --dim seq=128, not {option!r}")
        dims[name] = int(size)
    return dims
