"""Does SE make a trained classifier better, and what does it cost? A study on scikit-learn's digits.

For each seed: a small conv classifier is trained from scratch in PyTorch on 8×8 handwritten digits
and exported to ONNX; then the three se-onnx commands a user would run:

    se-onnx insert base.onnx -o se.onnx --where conv
    se-onnx train se.onnx -o se_trained.onnx --data train.npz --val val.npz
    se-onnx evaluate base.onnx --compare se_trained.onnx --data test.npz

As a control for "just more training", the base model is fine-tuned for the same epochs with
`se-onnx train --train all` (it has no SE blocks) and scored the same way. The split (60 % train,
20 % validation, 20 % test, stratified) is fixed; the seed changes the base model's init and data
order and the SE training's order. Needs the train and study extras:

    pip install -e '.[train,study]'
    python benchmarks/study_digits.py --seeds 5 --out /tmp/digits-study
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.study_common import run_cli as run  # noqa: E402
from benchmarks.study_common import spread  # noqa: E402


def split_digits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # N × 1 × 8 × 8 in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def train_base(x: np.ndarray, y: np.ndarray, seed: int, epochs: int, path: Path) -> None:
    """A small VGG-style classifier trained from scratch, exported to ONNX (opset 17, dynamic batch)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    model = nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        for batch in np.array_split(rng.permutation(len(x)), max(1, len(x) // 32)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (inputs[:1],),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--base-epochs", type=int, default=15, help="epochs of the from-scratch training")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of se-onnx train")
    parser.add_argument("--lr", type=float, default=3e-3, help="se-onnx train's learning rate")
    parser.add_argument("--ratio", type=float, default=0.25, help="insert's squeeze ratio")
    parser.add_argument("--runs", type=int, default=200, help="timed single-sample runs per model in evaluate")
    parser.add_argument("--out", type=Path, default=Path("/tmp/se-onnx-digits"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = split_digits()
    for name, (x, y) in data.items():
        np.savez(args.out / f"{name}.npz", x=x, y=y)
    print(
        f"digits: {', '.join(f'{k} {len(v[1])}' for k, v in data.items())} samples; {args.seeds} seeds", file=sys.stderr
    )
    rows = []
    for seed in range(args.seeds):
        folder = args.out / f"seed{seed}"
        folder.mkdir(exist_ok=True)
        base, se, se_trained, tuned = (folder / f"{n}.onnx" for n in ("base", "se", "se_trained", "base_tuned"))
        train_base(*data["train"], seed, args.base_epochs, base)
        run(["insert", str(base), "-o", str(se), "--where", "conv", "--ratio", str(args.ratio)])
        common = [
            "--data",
            str(args.out / "train.npz"),
            "--val",
            str(args.out / "val.npz"),
            "--epochs",
            str(args.epochs),
            "--lr",
            str(args.lr),
            "--seed",
            str(seed),
            "--no-progress",
        ]
        history = ["--plot", str(args.out / "history.png")] if seed == 0 else []
        trained = run(["train", str(se), "-o", str(se_trained), *common, *history])
        run(["train", str(base), "-o", str(tuned), "--train", "all", *common])  # the control
        test = ["--data", str(args.out / "test.npz"), "--runs", str(args.runs)]
        plot = ["--plot", str(args.out / "compare.png")] if seed == 0 else []
        comparison = run(["evaluate", str(base), "--compare", str(se_trained), *test, *plot])
        tuned_eval = run(["evaluate", str(tuned), *test])
        row = {
            "seed": seed,
            "base_top1": comparison["a"]["top1"],
            "se_top1": comparison["b"]["top1"],
            "tuned_top1": tuned_eval["top1"],
            "se_val_before": trained["epochs"][0]["val_accuracy"],
            "se_val_after": trained["epochs"][-1]["val_accuracy"],
            "latency_ratio": comparison["difference"]["latency_ratio"],
            "base_latency_ms": comparison["a"]["latency_ms"],
            "se_latency_ms": comparison["b"]["latency_ms"],
            "parameters": (comparison["a"]["parameters"], comparison["b"]["parameters"]),
            "flops": (comparison["a"]["flops"], comparison["b"]["flops"]),
            "se_parameters_trained": trained["trained_parameters"],
        }
        rows.append(row)
        print(
            f"seed {seed}: base {row['base_top1']:.4f}  +SE trained {row['se_top1']:.4f}  "
            f"base tuned {row['tuned_top1']:.4f}  "
            f"latency ×{row['latency_ratio']:.3f}",
            file=sys.stderr,
        )
    summary = summarize(rows)
    (args.out / "study.json").write_text(
        json.dumps({"rows": rows, "summary": summary, "settings": vars(args) | {"out": str(args.out)}}, indent=2)
    )
    print_summary(rows, summary)
    return 0


def summarize(rows: list[dict]) -> dict:
    return {
        "base_top1": spread([r["base_top1"] for r in rows]),
        "se_top1": spread([r["se_top1"] for r in rows]),
        "tuned_top1": spread([r["tuned_top1"] for r in rows]),
        "se_minus_base": spread([r["se_top1"] - r["base_top1"] for r in rows]),
        "tuned_minus_base": spread([r["tuned_top1"] - r["base_top1"] for r in rows]),
        "se_minus_tuned": spread([r["se_top1"] - r["tuned_top1"] for r in rows]),
        "latency_ratio_median": statistics.median(r["latency_ratio"] for r in rows),
        "parameters": rows[0]["parameters"],
        "flops": rows[0]["flops"],
    }


def print_summary(rows: list[dict], summary: dict) -> None:
    print("| seed | base top-1 | + SE, trained | base, tuned (control) | SE − base | latency B/A |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['base_top1']:.4f} | {r['se_top1']:.4f} | {r['tuned_top1']:.4f} | "
            f"{100 * (r['se_top1'] - r['base_top1']):+.2f} pts | {r['latency_ratio']:.3f}× |"
        )
    s = summary
    print(
        f"\nmean ± std over {len(rows)} seeds: "
        f"base {100 * s['base_top1']['mean']:.2f} ± {100 * s['base_top1']['std']:.2f} %, "
        f"+SE {100 * s['se_top1']['mean']:.2f} ± {100 * s['se_top1']['std']:.2f} %, "
        f"control {100 * s['tuned_top1']['mean']:.2f} ± {100 * s['tuned_top1']['std']:.2f} %; "
        f"SE − base {100 * s['se_minus_base']['mean']:+.2f} ± {100 * s['se_minus_base']['std']:.2f} pts, "
        f"SE − control {100 * s['se_minus_tuned']['mean']:+.2f} ± {100 * s['se_minus_tuned']['std']:.2f} pts; "
        f"parameters {s['parameters'][0]:,} → {s['parameters'][1]:,}, FLOPs {s['flops'][0]:,} → {s['flops'][1]:,}, "
        f"latency ×{s['latency_ratio_median']:.3f} (median over seeds of per-seed medians of run-by-run ratios)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
