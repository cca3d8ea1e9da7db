"""`se-onnx train`: fine-tune a classifier's SE blocks (or all its layers) on labelled data."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from se_onnx.cli._common import (
    add_rewrite_arguments,
    check_output_path,
    check_png_path,
    print_json,
    require,
)
from se_onnx.errors import SeOnnxError
from se_onnx.ir.model_io import load_model, save_model
from se_onnx.runtime.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassifierSignature,
    ImageOptions,
    load_dataset,
)

_COLUMNS = ("epoch", "train loss", "train acc", "val loss", "val acc", "seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune the SE blocks of a classifier (needs the train extra: PyTorch)",
        description="Train a classifier's SE blocks (or, with --train all, every layer's weights and "
        "biases) with cross-entropy in PyTorch, then write the trained values into the same ONNX graph: "
        "opset, names, inputs, outputs and every other initializer stay as they were. BatchNorm "
        "statistics stay fixed. After each epoch OUTPUT is rewritten atomically, so Ctrl-C leaves the "
        "last completed epoch there and nothing partial. Needs `pip install 'se-onnx[train]'`.",
    )
    add_rewrite_arguments(parser, "where to write the trained model (after every epoch)")
    add_data_arguments(parser)
    parser.add_argument(
        "--val",
        metavar="DIR|FILE.npz",
        help="validation data, same layout as --data; class folders are labelled by --data's class list",
    )
    training = parser.add_argument_group("training")
    training.add_argument(
        "--train",
        choices=("se", "attention", "all"),
        default="se",
        help="se (default): only the SE blocks; attention: every inserted block of any kind (SE, ECA, "
        "CBAM, coordinate attention); all: every layer",
    )
    training.add_argument("--epochs", type=int, default=5, help="passes over the data (default 5)")
    training.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 0.001)")
    training.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    training.add_argument("--seed", type=int, default=0, help="seed of the shuffling and of PyTorch (default 0)")
    parser.add_argument("--plot", metavar="FILE.png", help="write loss and accuracy per epoch as a PNG")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data and the image options that `train` and `evaluate` share."""
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR|FILE.npz",
        help="a folder with one subfolder of images per class (class i = i-th name in sorted order), "
        "or an .npz with x (N × the model's input dims) and y (N integer labels)",
    )
    images = parser.add_argument_group("images (folders only): resize, centre-crop, scale to [0, 1], normalise")
    images.add_argument("--resize", type=int, help="shorter side before the crop (default crop / 0.875)")
    images.add_argument("--crop", type=int, help="centre-crop side (default the model's input size)")
    for flag, default in (("--mean", IMAGENET_MEAN), ("--std", IMAGENET_STD)):
        shown = " ".join(map(str, default))
        images.add_argument(flag, type=float, nargs="+", help=f"per-channel {flag[2:]} (default ImageNet's: {shown})")


def check_image_support(*paths: str | None) -> None:
    """Image folders are decoded with Pillow: refuse a folder before any work when it is missing."""
    if any(path is not None and Path(path).is_dir() for path in paths):
        require("PIL", "train", "reading image folders")


def image_options(args: argparse.Namespace) -> ImageOptions:
    """The image options, refused when no data is an image folder: an .npz's x goes into the model as
    it is, and an option that would be ignored should not look as if it were applied."""
    given = [flag for flag in ("--resize", "--crop", "--mean", "--std") if getattr(args, flag[2:]) is not None]
    folders = [path for path in (args.data, getattr(args, "val", None)) if path is not None and Path(path).is_dir()]
    if given and not folders:
        raise SeOnnxError(
            f"{', '.join(given)} apply to image folders only; an .npz's x goes into the model as it is "
            "(normalise it when writing the file)"
        )
    return ImageOptions(
        resize=args.resize,
        crop=args.crop,
        mean=tuple(args.mean) if args.mean is not None else IMAGENET_MEAN,
        std=tuple(args.std) if args.std is not None else IMAGENET_STD,
    )


def run(args: argparse.Namespace) -> int:
    check_output_path(args.model, args.output, args.in_place)
    check_png_path(args.plot)
    require("torch", "train", "se-onnx train")
    check_image_support(args.data, args.val)
    images = image_options(args)
    try:
        from se_onnx.training.loop import TrainOptions, plot_history, train_model
    except ImportError as error:
        raise SeOnnxError(f"se-onnx train needs PyTorch: pip install 'se-onnx[train]' ({error})") from None
    options = TrainOptions(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        train=args.train,
        progress=not args.no_progress,
    )
    options.validate()
    model = load_model(args.model)
    signature = ClassifierSignature.of(model)
    train_data = load_dataset(args.data, signature, images)
    val_data = load_dataset(args.val, signature, images, classes=train_data.classes) if args.val else None
    table = sys.stderr if args.json else sys.stdout
    written: list[int] = []

    def checkpoint(trained, result) -> None:
        if result.epoch > 0:
            save_model(trained, args.output)
            written.append(result.epoch)
        print(_row(result), file=table, flush=True)

    print(_row(None), file=table)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"se-onnx: warning: {message}", file=sys.stderr)
        _, report = train_model(model, train_data, val_data, options, on_epoch=checkpoint)
    if args.plot:
        plot_history(report, args.plot)
    if report.interrupted:
        where = f"{args.output} holds epoch {written[-1]}" if written else f"nothing was written to {args.output}"
        print(f"se-onnx: interrupted; {where}", file=sys.stderr)
        return 130
    if args.json:
        print_json(report.to_dict())
        return 0
    print(
        f"\nepoch 0 is the model as it came; trained {report.trained_parameters:,} parameters "
        f"in {len(report.trained_initializers)} constants "
        f"({report.scope}, {report.blocks} {'blocks' if report.scope == 'attention' else 'SE blocks'}); "
        f"written to {args.output}"
    )
    return 0


def _row(result) -> str:
    """One line of the per-epoch table (the header for None), printed as each epoch ends."""
    widths = [max(len(column), 7) for column in _COLUMNS]
    if result is None:
        cells = list(_COLUMNS)
    else:
        values = (result.train_loss, result.train_accuracy, result.val_loss, result.val_accuracy)
        cells = [str(result.epoch), *("-" if v is None else f"{v:.4f}" for v in values), f"{result.seconds:.1f}"]
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))
