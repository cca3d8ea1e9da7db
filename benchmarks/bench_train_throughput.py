"""Benchmark of `se-onnx train`'s throughput: images/s of the data loader alone against images/s of
the training step alone (forward, backward, optimizer step), on one model and device.

The loader should never starve the model: with `--workers 2` its images/s should be at least twice
the step's. The step's figure on a GPU against the CPU is what moving a fine-tune to a GPU buys.

    python benchmarks/bench_train_throughput.py --model M.onnx --data TRAIN.npz
    python benchmarks/bench_train_throughput.py --model M.onnx --device cuda --amp bf16 --json
    python benchmarks/bench_train_throughput.py --model M.onnx --batches 5 --rounds 1   # smoke run

Without --data, the samples are random, in the model's input shape (the step's speed does not
depend on the values). Each figure is the median of --rounds rounds of --batches batches, after one
batch of warm-up; loader and step rounds alternate, so a machine that slows down mid-run slows both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from se_onnx.ir.model_io import load_model  # noqa: E402
from se_onnx.runtime.datasets import ClassifierSignature, Dataset, load_dataset  # noqa: E402
from se_onnx.training.data import TorchDataset, make_loader, set_epoch  # noqa: E402
from se_onnx.training.distributed import check_amp, resolve_device  # noqa: E402
from se_onnx.training.graph_module import OnnxModule  # noqa: E402
from se_onnx.training.loop import trainable_initializers  # noqa: E402
from se_onnx.training.recipe import build_optimizer  # noqa: E402

GOAL = 2.0  # loader images/s over step images/s, with --workers 2


def _data(path: Path | None, signature: ClassifierSignature, samples: int) -> Dataset:
    if path is not None:
        return load_dataset(str(path), signature)
    shape = [dim if isinstance(dim, int) else 1 for dim in signature.input_shape]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, *shape)).astype(np.float32)
    return Dataset(x, rng.integers(0, signature.classes, samples).astype(np.int64))


def loader_rate(data: Dataset, args: argparse.Namespace, epoch: int) -> float:
    """Images/s of iterating the training loader alone for --loader-batches batches from the start
    of an epoch (its workers start then, as they do in training)."""
    loader = make_loader(
        TorchDataset(data, augment=args.augment, seed=0),
        batch_size=args.batch_size,
        shuffle=True,
        seed=0,
        workers=args.workers,
        pin_memory=args.device.startswith("cuda"),
    )
    set_epoch(loader, epoch)
    started, seen = time.perf_counter(), 0
    for index, (x, _) in enumerate(loader):
        seen += len(x)
        if index + 1 == args.loader_batches:
            break
    return seen / (time.perf_counter() - started)


def step_timer(model, data: Dataset, args: argparse.Namespace) -> Callable[[], float]:
    """A function that times one round of --batches training steps and returns its images/s, on a
    batch already in memory on the device; the module and optimizer are built, and warmed up, once."""
    device = resolve_device(args.device)
    autocast = check_amp(args.amp, device)
    names, _ = trainable_initializers(model, args.train, batch_norm=args.bn)
    module = OnnxModule(model, batch_norm_statistics=args.bn == "train").to(device)
    parameters = [module.parameters_by_name[name] for name in names]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = build_optimizer(list(zip(names, parameters)), kind="adamw", lr=1e-4, weight_decay=0.0, no_decay=set())
    logits = module.output_names[0]
    x = torch.from_numpy(data.read(np.arange(args.batch_size)))
    y = torch.from_numpy(data.y[: args.batch_size])
    x, y = x.to(device), y.to(device)
    module.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            scores = module(x, extra=(logits,))[-1].float()
        loss = F.cross_entropy(scores, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: first-call allocations and kernel choices

    def timed_round() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.batches):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.batches * len(y) / (time.perf_counter() - started)

    return timed_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the ONNX classifier to train")
    parser.add_argument("--data", type=Path, help="an .npz or image folder (default: random samples)")
    parser.add_argument("--train", default="all", help="se-onnx train --train (default all: the slowest step)")
    parser.add_argument("--bn", default="train", help="se-onnx train --bn (default train)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--augment", default="flip-crop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off")
    parser.add_argument("--batches", type=int, default=20, help="training steps per round")
    parser.add_argument(
        "--loader-batches", type=int, default=100, help="batches per loader round, worker start-up included"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the step (default torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    data = _data(args.data, ClassifierSignature.of(model), args.batch_size * args.loader_batches)
    timed_step = step_timer(model, data, args)
    loader, step = [], []
    for round_ in range(args.rounds):
        loader.append(loader_rate(data, args, epoch=round_))
        step.append(timed_step())
    result = {
        "model": str(args.model),
        "device": args.device,
        "amp": args.amp,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "augment": args.augment,
        "loader_images_per_s": statistics.median(loader),
        "step_images_per_s": statistics.median(step),
        "loader_over_step": statistics.median(loader) / statistics.median(step),
        "goal": GOAL,
        "rounds": {"loader": loader, "step": step},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model.name} on {args.device} (amp {args.amp}), batch {args.batch_size}, --train {args.train}")
    print(
        f"loader alone ({args.workers} workers, augment {args.augment}): {result['loader_images_per_s']:,.0f} images/s"
    )
    print(f"training step alone:                       {result['step_images_per_s']:,.0f} images/s")
    verdict = "meets" if result["loader_over_step"] >= GOAL else "misses"
    print(f"loader / step: {result['loader_over_step']:.2f} ({verdict} the goal of ≥ {GOAL:g})")


if __name__ == "__main__":
    main()
