"""Does SE help a ResNet on Fashion-MNIST, trained from scratch or added to a trained one? And at what cost?

Two experiments, each seed running every arm, every step an se-onnx command (in this process):

(a) SENet's own experiment, from scratch. A CIFAR-style ResNet-8 for 28 × 28 images
    (`models/build_samples.py: cifar_resnet`: a 3×3 stem of 16 channels, one basic block per stage
    at 16/32/64 channels, global pooling, a linear layer; He-normal convs, BatchNorm at its initial
    state) is built with random weights drawn from the seed. SE blocks go into that same random
    model on every residual branch (`se-onnx insert --where residual`, squeeze ratio 1/16 as in
    SENet, and 1/4), and all three models are trained from the same initial weights with the same
    recipe (`se-onnx train --train all --bn train`, RECIPES["scratch"]).
(b) The user's case. SE blocks (ratio 1/4, identity init) are inserted into the trained base of (a)
    and only they are trained (`--train se`, RECIPES["finetune-se"]) for --finetune-epochs, against a
    control that trains the base's own layers for the same extra epochs (`--train all`,
    RECIPES["finetune-all"]): what SE adds beyond "it trained longer".

The seed draws the initial weights, the SE blocks' first layers and the order of the data. Every
model is scored on the 10,000 test images by `se-onnx evaluate` in ONNX Runtime (the reported
top-1; nothing is selected on it: each run's last epoch is scored), and `evaluate --compare`
gives parameters, FLOPs and latency of the base against +SE. Output: a markdown table of each arm's
top-1 (mean ± sd over seeds), each paired difference (same seed) with its 95 % t-interval, and the
cost; --json FILE writes the raw results.

Data: the four IDX files of Fashion-MNIST (Debian: `apt install dataset-fashion-mnist`, which puts
them in /usr/share/datasets/fashion-mnist; or from https://github.com/zalandoresearch/fashion-mnist),
written as .npz files (x N×1×28×28 float32 normalised with the training images' mean and std,
y int64) into --work.

Budget. The study is meant to run in under an hour on 2 CPU cores, and se-onnx train runs the
graph node by node in PyTorch: on a quiet 2-core machine this ResNet-8 trains at about 1,000
images/s, so one epoch of all 60,000 images takes a minute and the paper-like recipe hours. The
defaults are therefore a short recipe, not a full one: a stratified 10,000-image subset of the
training images, the same for every seed (--train-subset; the full set is 60,000), 6 epochs from
scratch (--epochs; CIFAR ResNets are trained for 160 on all their images), 2 epochs of
fine-tuning (--finetune-epochs), and train's per-epoch validation on 1,000 of the test images
(--val-subset; the reported top-1 is always on all 10,000). The log estimates the remaining time
after the first seed. --stem-stride 2 runs the stages at 14/7/4 pixels instead of
28/14/7, for about half the time per step. On a GPU, the full recipe:

    python benchmarks/study_fashion_mnist.py --train-subset 0 --val-subset 0 --epochs 30 \\
        --finetune-epochs 5 --device cuda --amp bf16 --json fmnist.json

Needs the train extra (PyTorch). The default run, and a smoke run of a few seconds (--quick: 1
seed, a few hundred images, 1 epoch):

    python benchmarks/study_fashion_mnist.py --json fmnist.json
    python benchmarks/study_fashion_mnist.py --quick
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.study_common import paired_interval, run_cli, spread  # noqa: E402
from models.build_samples import cifar_resnet  # noqa: E402

# The training recipes, as `se-onnx train` flags, all in one place; --epochs or --finetune-epochs,
# --seed and the --device/--amp/--workers passthrough are added to each. From scratch: SGD (momentum
# as train sets it) with a cosine schedule after a warm-up epoch, as CIFAR ResNets are trained, label
# smoothing as SENet used; no augmentation, which a run of a few epochs would only slow down (at
# 28 × 28, flip-crop's quarter-area crops make a harder task than the test). Fine-tuning the SE
# blocks alone: AdamW at 3e-3 (the blocks start at the identity and have few steps to leave it: 158
# at the defaults), frozen BatchNorm (the base stays exactly as trained). The control fine-tunes
# every layer with SGD at a tenth of the from-scratch rate, BatchNorm training, as one would
# continue training the base.
RECIPES = {
    "scratch": "--train all --bn train --optimizer sgd --lr 0.1 --weight-decay 5e-4 --batch-size 128 "
    "--schedule cosine --warmup-epochs 1 --label-smoothing 0.1",
    "finetune-se": "--train se --bn frozen --optimizer adamw --lr 3e-3 --weight-decay 0.05 --batch-size 128 "
    "--schedule cosine --warmup-epochs 0 --label-smoothing 0.1",
    "finetune-all": "--train all --bn train --optimizer sgd --lr 0.01 --weight-decay 5e-4 --batch-size 128 "
    "--schedule cosine --warmup-epochs 0 --label-smoothing 0.1",
}
# `se-onnx insert` for every arm with SE: on each residual branch before its Add, as SENet places
# them, with the trainable identity init (gate 1 at the start, so +SE starts as the very same
# function as the base); --ratio per arm, --seed per seed.
INSERT = "--where residual --init identity"
SCRATCH_RATIOS = (0.0625, 0.25)  # (a): SENet's 1/16, and the 1/4 that `insert` defaults to
FINETUNE_RATIO = 0.25  # (b)

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
QUICK = {
    "seeds": 1,
    "train_subset": 200,
    "val_subset": 100,
    "test_subset": 500,
    "epochs": 2,  # the from-scratch recipe warms up for one epoch, which needs at least one more
    "finetune_epochs": 1,
    "runs": 5,
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as the uint8 array its header describes."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise SystemExit(f"{path}: not an IDX file of unsigned bytes")
    rank = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(shape)):
        raise SystemExit(f"{path}: the header says {shape}, the file holds {data.size} bytes")
    return data.reshape(shape)


def find_idx(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(
        f"{folder}/{stem}.gz not found: install Debian's dataset-fashion-mnist (files in {DEFAULT_DATA}), or put "
        "the four .gz files from https://github.com/zalandoresearch/fashion-mnist in a folder and pass --data FOLDER"
    )


def stratified_subset(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `n` samples (all for n ≤ 0 or n ≥ len(y)) drawn at random, the classes taking
    turns, so each class gets an equal share where it has enough samples."""
    if n <= 0 or n >= len(y):
        return np.arange(len(y))
    order = np.random.default_rng(seed).permutation(len(y))
    rank = np.empty(len(y), np.int64)
    for label in np.unique(y):
        members = order[y[order] == label]
        rank[members] = np.arange(len(members))
    return np.sort(order[np.argsort(rank[order], kind="stable")[:n]])


def prepare_data(source: Path, work: Path, train_subset: int, val_subset: int, test_subset: int = 0) -> dict[str, Path]:
    """train.npz and test.npz (stratified subsets, or every image for 0) and val.npz (a stratified subset
    of test.npz's images, or test.npz itself), normalised with the mean and std of all training images."""
    arrays = {}
    for split, (images, labels) in IDX_FILES.items():
        x, y = read_idx(find_idx(source, images)), read_idx(find_idx(source, labels))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise SystemExit(f"{source}: {split} images {list(x.shape)} and labels {list(y.shape)} do not match")
        arrays[split] = (x.astype(np.float32) / 255, y.astype(np.int64))
    mean, std = float(arrays["train"][0].mean()), float(arrays["train"][0].std())

    def write(name: str, x: np.ndarray, y: np.ndarray) -> Path:
        np.savez(work / f"{name}.npz", x=((x - mean) / std)[:, None].astype(np.float32), y=y)
        return work / f"{name}.npz"

    x, y = arrays["train"]
    keep = stratified_subset(y, train_subset)
    paths = {"train": write("train", x[keep], y[keep])}
    x, y = arrays["test"]
    keep = stratified_subset(y, test_subset)
    x, y = x[keep], y[keep]
    paths["test"] = write("test", x, y)
    keep = stratified_subset(y, val_subset)  # some of the test images scored, or all of them
    paths["val"] = paths["test"] if len(keep) == len(y) else write("val", x[keep], y[keep])
    return paths


class Study:
    """The commands of one study, with its settings; each run logged to stderr as it ends."""

    def __init__(self, args: argparse.Namespace, data: dict[str, Path]) -> None:
        self.args, self.data = args, data
        self.started = time.perf_counter()
        self.passthrough = [
            token
            for flag, value in (("--device", args.device), ("--amp", args.amp), ("--workers", args.workers))
            if value is not None
            for token in (flag, str(value))
        ]

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.0f} s] {message}", file=sys.stderr, flush=True)

    def insert(self, model: Path, output: Path, ratio: float, seed: int) -> dict:
        flags = [*shlex.split(INSERT), "--ratio", str(ratio), "--seed", str(seed)]
        report = run_cli(["insert", str(model), "-o", str(output), *flags])
        if not report["blocks"]:
            raise SystemExit(f"se-onnx insert found no residual branch in {model}")
        return report

    def train(self, model: Path, output: Path, recipe: str, epochs: int, seed: int) -> dict:
        command = ["train", str(model), "-o", str(output), "--data", str(self.data["train"])]
        command += ["--val", str(self.data["val"]), *shlex.split(RECIPES[recipe]), "--epochs", str(epochs)]
        command += ["--seed", str(seed), "--no-progress", *self.passthrough]
        report = run_cli(command)
        last = report["epochs"][-1]
        seconds = sum(epoch["seconds"] for epoch in report["epochs"])
        self.log(
            f"seed {seed}: {output.stem}: {plural(epochs, 'epoch')} ({recipe}) in {seconds:.0f} s, train loss "
            f"{last['train_loss']:.4f}, val top-1 {last['val_accuracy']:.4f}"
        )
        return {"seconds": seconds, "epochs": report["epochs"], "trained_parameters": report["trained_parameters"]}

    def evaluate(self, base: Path, others: list[Path]) -> dict:
        command = ["evaluate", str(base), "--compare", *map(str, others), "--data", str(self.data["test"])]
        return run_cli([*command, "--runs", str(self.args.runs), "--provider", self.args.provider])

    def seed(self, seed: int, folder: Path) -> dict:
        """Every arm of both experiments for one seed: the models in `folder`, the scores returned."""
        folder.mkdir(parents=True, exist_ok=True)
        initial = folder / "init_base.onnx"
        onnx.save(cifar_resnet(self.args.blocks, stem_stride=self.args.stem_stride, seed=seed), initial)
        # (a) from scratch: the base and +SE at each ratio, from the same initial weights
        scratch = {"base": (initial, folder / "scratch_base.onnx")}
        for ratio in SCRATCH_RATIOS:
            arm = f"se_{ratio:g}"
            scratch[arm] = (folder / f"init_{arm}.onnx", folder / f"scratch_{arm}.onnx")
            self.insert(initial, scratch[arm][0], ratio, seed)
        runs = {
            f"scratch_{arm}": self.train(start, trained, "scratch", self.args.epochs, seed)
            for arm, (start, trained) in scratch.items()
        }
        arms = list(scratch)
        base = scratch["base"][1]
        comparison = self.evaluate(base, [scratch[arm][1] for arm in arms[1:]])
        top1 = {f"scratch_{arm}": model["top1"] for arm, model in zip(arms, comparison["models"])}
        cost = {
            arm: {key: model[key] for key in ("parameters", "flops", "latency_ms")}
            for arm, model in zip(arms, comparison["models"])
        }
        for arm, difference in zip(arms[1:], comparison["differences"]):
            cost[arm] |= {key: difference[key] for key in ("latency_ratio", "latency_ratio_p10", "latency_ratio_p90")}
        # (b) SE into the trained base, trained alone, against the base trained as long again
        with_se, tuned_se, tuned_base = (
            folder / f"{name}.onnx" for name in ("init_finetune_se", "finetune_se", "finetune_all")
        )
        self.insert(base, with_se, FINETUNE_RATIO, seed)
        runs["finetune_se"] = self.train(with_se, tuned_se, "finetune-se", self.args.finetune_epochs, seed)
        runs["finetune_all"] = self.train(base, tuned_base, "finetune-all", self.args.finetune_epochs, seed)
        finetuned = self.evaluate(tuned_base, [tuned_se])
        top1["finetune_all"], top1["finetune_se"] = finetuned["a"]["top1"], finetuned["b"]["top1"]
        self.log(f"seed {seed}: test top-1 " + ", ".join(f"{arm} {value:.4f}" for arm, value in top1.items()))
        return {"seed": seed, "top1": top1, "cost": cost, "runs": runs}


# The arms and the paired differences reported, in the table's order and words.
ARMS = {
    "scratch_base": "(a) from scratch: base",
    **{f"scratch_se_{r:g}": f"(a) from scratch: + SE, ratio {r:g}" for r in SCRATCH_RATIOS},
    "finetune_all": "(b) trained base, {e} more of every layer (control)",
    "finetune_se": f"(b) trained base + SE, ratio {FINETUNE_RATIO:g}, {{e}} of the SE blocks only",
}
DIFFERENCES = {
    **{(f"scratch_se_{r:g}", "scratch_base"): f"(a) + SE {r:g} − base" for r in SCRATCH_RATIOS},
    ("finetune_se", "finetune_all"): "(b) + SE fine-tuned − control",
    ("finetune_se", "scratch_base"): "(b) + SE fine-tuned − trained base",
    ("finetune_all", "scratch_base"): "(b) control − trained base",
}


def summarize(rows: list[dict]) -> dict:
    arms = {arm: spread([row["top1"][arm] for row in rows]) for arm in ARMS}
    differences = {
        f"{a} - {b}": paired_interval([row["top1"][a] - row["top1"][b] for row in rows]) for a, b in DIFFERENCES
    }
    cost = {}
    for arm in rows[0]["cost"]:
        values = [row["cost"][arm] for row in rows]
        cost[arm] = {key: statistics.median(value[key] for value in values) for key in values[0]}
    return {"top1": arms, "differences": differences, "cost": cost}


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'s' * (count != 1)}"


def markdown(rows: list[dict], summary: dict, args: argparse.Namespace, sizes: dict[str, int], minutes: float) -> str:
    seeds = plural(len(rows), "seed")
    lines = [
        f"Fashion-MNIST, ResNet-{6 * args.blocks + 2}, {seeds}: {plural(sizes['train'], 'training image')}, "
        f"{plural(args.epochs, 'epoch')} from scratch, {args.finetune_epochs} of fine-tuning; top-1 on "
        f"{plural(sizes['test'], 'test image')} ({minutes:.0f} min)",
        "",
        "| arm | test top-1, mean ± sd | min – max |",
        "|---|---|---|",
    ]
    finetune = plural(args.finetune_epochs, "epoch")
    for arm, label in ARMS.items():
        s = summary["top1"][arm]
        mean = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} %"
        lines.append(f"| {label.format(e=finetune)} | {mean} | {100 * s['min']:.2f} – {100 * s['max']:.2f} % |")
    lines += [
        "",
        "| paired difference, same seed | mean | 95 % interval (t) | higher / lower in |",
        "|---|---|---|---|",
    ]
    for (a, b), label in DIFFERENCES.items():
        d = summary["differences"][f"{a} - {b}"]
        interval = "–" if d["low"] is None else f"{100 * d['low']:+.2f} to {100 * d['high']:+.2f} pts"
        counts = f"{d['positive']} / {d['negative']} of {seeds}"
        lines.append(f"| {label} | {100 * d['mean']:+.2f} pts | {interval} | {counts} |")
    lines += [
        "",
        "| model | parameters | FLOPs per image | latency, batch 1 | latency vs base (p10 – p90) |",
        "|---|---|---|---|---|",
    ]
    base = summary["cost"]["base"]
    for arm, c in summary["cost"].items():
        parameters, flops = f"{int(c['parameters']):,}", f"{c['flops'] / 1e6:.2f} M"
        if arm == "base":
            name, ratio = "base", "–"
        else:
            name = f"+ SE, ratio {arm.removeprefix('se_')}"
            parameters += f" (+{100 * (c['parameters'] / base['parameters'] - 1):.1f} %)"
            flops += f" (+{100 * (c['flops'] / base['flops'] - 1):.2f} %)"
            ratio = f"×{c['latency_ratio']:.3f} ({c['latency_ratio_p10']:.3f} – {c['latency_ratio_p90']:.3f})"
        lines.append(f"| {name} | {parameters} | {flops} | {c['latency_ms']:.3f} ms | {ratio} |")
    lines += [
        "",
        f"Latency: ONNX Runtime ({args.provider}), median of {args.runs} interleaved single-image runs per model "
        "and seed, then the median over seeds; the ratio is run by run. Test top-1 (%) per seed:",
        "",
        "| seed | " + " | ".join(ARMS) + " |",
        "|---|" + "---|" * len(ARMS),
    ]
    lines += [f"| {row['seed']} | " + " | ".join(f"{100 * row['top1'][a]:.2f}" for a in ARMS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder of the four IDX files, .gz or not (default {DEFAULT_DATA})",
    )
    parser.add_argument("--work", type=Path, help="where the data and models go (default a temporary folder, removed)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 … N−1, each running every arm (default 5)")
    parser.add_argument(
        "--blocks", type=int, default=1, help="basic blocks per stage: 1 ResNet-8 (default), 2 ResNet-14"
    )
    parser.add_argument(
        "--stem-stride", type=int, default=1, help="2: stages at 14/7/4 pixels, half the time (default 1)"
    )
    parser.add_argument("--epochs", type=int, default=6, help="epochs from scratch, (a) (default 6)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="epochs of fine-tuning, (b) (default 2)")
    parser.add_argument(
        "--train-subset",
        type=int,
        default=10_000,
        help="training images, stratified, the same for every seed (0: all; default 10000)",
    )
    parser.add_argument(
        "--val-subset", type=int, default=1_000, help="test images train scores after each epoch (0: all; default 1000)"
    )
    parser.add_argument(
        "--test-subset", type=int, default=0, help="test images scored (default 0: all; for smoke runs)"
    )
    parser.add_argument(
        "--runs", type=int, default=100, help="timed single-image runs per model in evaluate (default 100)"
    )
    parser.add_argument("--provider", default="cpu", help="evaluate's ONNX Runtime provider (default cpu)")
    parser.add_argument("--device", help="se-onnx train --device: auto, cpu, cuda (default train's own)")
    parser.add_argument("--amp", help="se-onnx train --amp: off, bf16, fp16 (default train's own)")
    parser.add_argument("--workers", type=int, help="se-onnx train --workers (default train's own)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the settings, per-seed results and summary")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of seconds: 1 seed, 200 training and 500 test images, 1 epoch"
    )
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    with tempfile.TemporaryDirectory(prefix="se-onnx-fmnist-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        data = prepare_data(args.data, work, args.train_subset, args.val_subset, args.test_subset)
        study = Study(args, data)
        sizes = {split: len(np.load(path)["y"]) for split, path in data.items()}
        study.log(f"Fashion-MNIST in {work}: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
        rows = []
        for seed in range(args.seeds):
            rows.append(study.seed(seed, work / f"seed{seed}"))
            if seed == 0 and args.seeds > 1:
                minutes = (time.perf_counter() - study.started) / 60
                study.log(
                    f"seed 0 took {minutes:.0f} min; the other {args.seeds - 1} ≈ {minutes * (args.seeds - 1):.0f} min"
                )
    minutes = (time.perf_counter() - study.started) / 60
    summary = summarize(rows)
    table = markdown(rows, summary, args, sizes, minutes)
    if args.json:
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        record = {"settings": settings, "recipes": RECIPES, "insert": INSERT, "minutes": minutes}
        args.json.write_text(json.dumps(record | {"summary": summary, "rows": rows}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
