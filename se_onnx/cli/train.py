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
from se_onnx.training.options import (
    AMP_MODES,
    AUGMENTS,
    BATCH_NORM_MODES,
    DEVICES_HELP,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_SCOPES,
    TrainOptions,
)

_COLUMNS = ("epoch", "lr", "train loss", "train acc", "val loss", "val acc", "seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune the SE blocks of a classifier (needs the train extra: PyTorch)",
        description="Train a classifier's SE blocks (or, with --train all, every layer's weights and "
        "biases) with cross-entropy in PyTorch, then write the trained values into the same ONNX graph: "
        "opset, names, inputs, outputs and every other initializer stay as they were (BatchNorm's too, "
        "unless --bn train). After each epoch OUTPUT is rewritten atomically, so Ctrl-C leaves the last "
        "completed epoch there and nothing partial, and OUTPUT.ckpt lets --resume go on from it. Runs on "
        "a GPU when PyTorch sees one, and in several processes under torchrun. Needs "
        "`pip install 'se-onnx[train]'`.",
    )
    add_rewrite_arguments(parser, "where to write the trained model (after every epoch)")
    add_data_arguments(parser)
    parser.add_argument(
        "--val",
        metavar="DIR|FILE.npz",
        help="validation data, same layout as --data; class folders are labelled by --data's class list",
    )
    training = parser.add_argument_group(
        "training (the defaults fine-tune inserted blocks: AdamW, cosine schedule, BatchNorm frozen)"
    )
    training.add_argument(
        "--train",
        choices=TRAIN_SCOPES,
        default="se",
        help="se (default): only the SE blocks; attention: every inserted block of any kind (SE, ECA, "
        "CBAM, coordinate attention); all: every layer",
    )
    training.add_argument("--epochs", type=int, default=5, help="passes over the data (default 5)")
    training.add_argument("--batch-size", type=int, default=32, help="samples per step and process (default 32)")
    training.add_argument(
        "--seed", type=int, default=0, help="seed of the shuffling, augmentation and PyTorch (default 0)"
    )
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--optimizer", choices=OPTIMIZERS, default="adamw", help="adamw (default) or sgd (momentum 0.9, Nesterov)"
    )
    recipe.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 0.001)")
    recipe.add_argument(
        "--weight-decay",
        type=float,
        default=0.01,
        help="decoupled for adamw, L2 for sgd; never on biases, norms, gains (default 0.01)",
    )
    recipe.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="cosine to 0 (default) or constant")
    recipe.add_argument(
        "--warmup-epochs", type=float, default=0.0, help="linear warm-up from 0 to --lr, in epochs (default 0)"
    )
    recipe.add_argument("--label-smoothing", type=float, default=0.0, help="of the training loss (default 0)")
    recipe.add_argument(
        "--augment",
        choices=AUGMENTS,
        default="none",
        help="flip-crop: random-resized crop and horizontal flip of image-shaped inputs (default none)",
    )
    recipe.add_argument(
        "--bn",
        choices=BATCH_NORM_MODES,
        default="frozen",
        help="frozen (default): BatchNorm keeps its statistics and scale and bias; train: batch statistics, "
        "running statistics updated and written back, scale and bias trained with --train all",
    )
    recipe.add_argument("--grad-clip", type=float, help="clip the gradients' global norm to this (default off)")
    where = parser.add_argument_group("where (under torchrun, one process per GPU or CPU share)")
    where.add_argument(
        "--device", default="auto", metavar=DEVICES_HELP, help="auto (default): CUDA when PyTorch sees a GPU, else cpu"
    )
    where.add_argument(
        "--amp", choices=AMP_MODES, default="off", help="mixed precision: bf16 (CPU or CUDA), fp16 (CUDA) (default off)"
    )
    where.add_argument(
        "--workers",
        type=int,
        help="data-loading processes (default 0 for an .npz, up to 4 for image folders, which they decode)",
    )
    where.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT.ckpt, the checkpoint written after every epoch, with the same options",
    )
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
        from se_onnx.training.checkpoint import checkpoint_path
        from se_onnx.training.distributed import placed
        from se_onnx.training.loop import plot_history, train_model
    except ImportError as error:
        raise SeOnnxError(f"se-onnx train needs PyTorch: pip install 'se-onnx[train]' ({error})") from None
    options = TrainOptions(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        train=args.train,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        bn=args.bn,
        grad_clip=args.grad_clip,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        progress=not args.no_progress,
    )
    options.validate()
    model = load_model(args.model)
    signature = ClassifierSignature.of(model)
    train_data = load_dataset(args.data, signature, images)
    val_data = load_dataset(args.val, signature, images, classes=train_data.classes) if args.val else None
    table = sys.stderr if args.json else sys.stdout
    written: list[int] = []

    def keep(trained, result) -> None:
        if result.epoch > 0:
            save_model(trained, args.output)
            written.append(result.epoch)
        print(_row(result), file=table, flush=True)

    with placed(options.device) as placement, warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"se-onnx: warning: {message}", file=sys.stderr)
        if placement.is_main:
            print(_row(None), file=table, flush=True)
        _, report = train_model(
            model,
            train_data,
            val_data,
            options,
            placement=placement,
            on_epoch=keep,
            checkpoint=checkpoint_path(args.output),
            resume=args.resume,
        )
    if not placement.is_main:
        return 130 if report.interrupted else 0
    if args.plot:
        plot_history(report, args.plot)
    if report.interrupted:
        where = f"{args.output} holds epoch {written[-1]}" if written else f"nothing was written to {args.output}"
        print(f"se-onnx: interrupted; {where}; --resume continues from the checkpoint", file=sys.stderr)
        return 130
    if args.json:
        print_json(report.to_dict())
        return 0
    first = "" if report.baseline is None else "epoch 0 is the model as it came; "
    processes = f" in {report.processes} processes" if report.processes > 1 else ""
    print(
        f"\n{first}trained {report.trained_parameters:,} parameters on {report.device}{processes} "
        f"in {len(report.trained_initializers)} constants "
        f"({report.scope}, {report.blocks} {'blocks' if report.scope == 'attention' else 'SE blocks'}); "
        f"written to {args.output}"
    )
    return 0


def _row(result) -> str:
    """One line of the per-epoch table (the header for None), printed as each epoch ends."""
    widths = [max(len(column), 8 if column == "lr" else 7) for column in _COLUMNS]
    if result is None:
        cells = list(_COLUMNS)
    else:
        values = (result.train_loss, result.train_accuracy, result.val_loss, result.val_accuracy)
        lr = "-" if result.lr is None else f"{result.lr:.2e}"
        cells = [str(result.epoch), lr, *("-" if v is None else f"{v:.4f}" for v in values), f"{result.seconds:.1f}"]
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))
