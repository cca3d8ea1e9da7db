"""Labelled data for `train` and `evaluate`: an image folder per class, or an .npz of x and y,
checked against the model's input; images are decoded a batch at a time (numpy only; Pillow for images)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The ImageNet evaluation convention: resize the shorter side to crop / 0.875 (256 for 224), then centre-crop.
CROP_FRACTION = 0.875
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How images become the model's input: resize, centre-crop, scale to [0, 1], normalise."""

    resize: int | None = None  # shorter side before the crop; default crop / 0.875
    crop: int | None = None  # the crop's side; default the model's input size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


class Dataset:
    """Inputs N × … in float32 and integer labels, held in memory, with the class names of an image
    folder; read a batch at a time (`batches`), so that a subclass may decode them only then."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: list[str] | None = None) -> None:
        self.x, self.y, self.classes = x, y, classes

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The inputs of the samples at `indices`, stacked."""
        return self.x[indices]

    def batches(self, size: int, order: np.ndarray | None = None):
        """(x, y) slices of at most `size` samples, in `order` (default: as stored)."""
        indices = np.arange(len(self)) if order is None else order
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            yield self.read(chunk), self.y[chunk]


class ImageFolderDataset(Dataset):
    """An image folder's files and labels, each batch decoded when it is read: memory holds one
    batch, not the folder (an ImageNet-size folder would take tens of GB as float32)."""

    def __init__(
        self,
        files: list[Path],
        y: np.ndarray,
        classes: list[str],
        *,
        rgb: bool,
        resize: int,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.files, self.y, self.classes = files, y, classes
        self._rgb, self._resize, self._size = rgb, resize, size
        self._mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(std, np.float32).reshape(-1, 1, 1)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (3 if self._rgb else 1, *self._size)

    def read(self, indices: np.ndarray) -> np.ndarray:
        x = np.empty((len(indices), *self.sample_shape), np.float32)
        for row, index in enumerate(indices):
            x[row] = _image(self.files[index], self._rgb, self._resize, self._size)
        x -= self._mean
        x /= self._std
        return x


@dataclasses.dataclass(frozen=True)
class ClassifierSignature:
    """The model's one float input (N × C × spatial…) and its class-score output (N × classes)."""

    input_shape: tuple[int | str | None, ...]  # without the batch dim
    classes: int

    @classmethod
    def of(cls, model: ir.Model) -> ClassifierSignature:
        graph = model.graph
        inputs = [value for value in graph.inputs if value.name not in graph.initializers]
        if len(inputs) != 1:
            raise SeOnnxError(
                f"the model has {len(inputs)} inputs; train and evaluate take a classifier with one image input"
            )
        value = inputs[0]
        if value.dtype != ir.DataType.FLOAT or value.shape is None or len(value.shape) < 3:
            raise SeOnnxError(
                f"input {value.name!r} is {value.dtype.name if value.dtype else '?'} {_dims(value.shape)}; "
                "train and evaluate take a float32 N × C × H × W (or other spatial rank) input"
            )
        output = graph.outputs[0]
        shape = output.shape
        classes = shape[1] if shape is not None and len(shape) == 2 else None
        if not isinstance(classes, int) or classes < 2 or not (output.dtype and output.dtype.is_floating_point()):
            raise SeOnnxError(
                f"output {output.name!r} is {output.dtype.name if output.dtype else '?'} {_dims(shape)}, "
                "not class scores (N × classes with at least 2 classes); train and evaluate take a classifier"
            )
        input_shape = tuple(
            d if isinstance(d, int) else (d.value if d is not None else None) for d in list(value.shape)[1:]
        )
        return cls(input_shape, classes)

    @property
    def channels(self) -> int | None:
        channels = self.input_shape[0]
        return channels if isinstance(channels, int) else None


def _dims(shape: ir.Shape | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join(str(d if isinstance(d, int) else (d.value or "?")) for d in shape) + "]"


def load_dataset(
    path: str | Path,
    signature: ClassifierSignature,
    options: ImageOptions = ImageOptions(),
    *,
    classes: list[str] | None = None,
) -> Dataset:
    """An .npz file with `x` (N × the model's input dims) and `y` (N labels), or an image folder with
    one subfolder of images per class (class i is the i-th name in sorted order, or the index of its
    name in `classes`: the training data's, so that validation labels mean the same classes)."""
    path = Path(path)
    if path.is_dir():
        data = _image_folder(path, signature, options, classes)
    elif path.suffix == ".npz" and path.is_file():
        data = _npz(path, signature)
    else:
        raise SeOnnxError(f"{path}: neither a folder of class subfolders nor an .npz file")
    if len(data) == 0:
        raise SeOnnxError(f"{path}: no samples")
    if data.y.min() < 0 or data.y.max() >= signature.classes:
        raise SeOnnxError(
            f"{path}: labels run from {data.y.min()} to {data.y.max()}, but the model scores "
            f"{signature.classes} classes (0 to {signature.classes - 1})"
        )
    return data


def _npz(path: Path, signature: ClassifierSignature) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files or "y" not in archive.files:
                raise SeOnnxError(f"{path}: needs arrays 'x' and 'y', has {', '.join(archive.files) or 'none'}")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as error:
        raise SeOnnxError(f"{path}: cannot read arrays ({' '.join(str(error).split())})") from None
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise SeOnnxError(f"{path}: y must be a vector of integer labels, not {y.dtype} {list(y.shape)}")
    expected = signature.input_shape
    fits = x.ndim == len(expected) + 1 and all(not isinstance(d, int) or d == n for d, n in zip(expected, x.shape[1:]))
    if not fits:
        shown = ", ".join(str(d) if isinstance(d, int) else "?" for d in expected)
        raise SeOnnxError(f"{path}: x is {list(x.shape)}, the model takes [N, {shown}]")
    if len(x) != len(y):
        raise SeOnnxError(f"{path}: x has {len(x)} samples, y {len(y)} labels")
    if not np.issubdtype(x.dtype, np.number):
        raise SeOnnxError(f"{path}: x is {x.dtype}, not numbers")
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64))


def _image_folder(
    root: Path, signature: ClassifierSignature, options: ImageOptions, known: list[str] | None
) -> Dataset:
    if len(signature.input_shape) != 3:
        raise SeOnnxError(f"{root}: an image folder needs a model with an N × C × H × W input")
    channels, height, width = signature.input_shape
    if channels not in (1, 3):
        raise SeOnnxError(f"{root}: images are read as RGB or greyscale; the model takes {channels} channels")
    crop = options.crop
    if crop is None:
        if not (isinstance(height, int) and isinstance(width, int)):
            raise SeOnnxError(f"{root}: the model's input size is not fixed; pass --crop")
        size = (height, width)
    else:
        size = (crop, crop)
        if any(isinstance(d, int) and d != crop for d in (height, width)):
            raise SeOnnxError(f"--crop {crop} does not fit the model's {height} × {width} input")
    mean, std = _normalisation(options, channels)
    names = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise SeOnnxError(f"{root}: no class subfolders (expected ROOT/CLASS/IMAGE files)")
    classes = names if known is None else known
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise SeOnnxError(
            f"{root}: class folders {', '.join(map(repr, unknown))} are not among the training data's classes"
        )
    if len(classes) > signature.classes:
        raise SeOnnxError(f"{root}: {len(classes)} class folders, but the model scores {signature.classes} classes")
    files = [
        (file, classes.index(name))
        for name in names
        for file in sorted((root / name).iterdir())
        if file.suffix.lower() in IMAGE_SUFFIXES
    ]
    resize = options.resize or round(max(size) / CROP_FRACTION)
    labels = np.array([label for _, label in files], np.int64)
    dataset = ImageFolderDataset(
        [file for file, _ in files], labels, classes, rgb=channels == 3, resize=resize, size=size, mean=mean, std=std
    )
    if files:
        dataset.read(np.arange(1))  # an unreadable first image is refused before any work
    return dataset


def _image(file: Path, rgb: bool, resize: int, size: tuple[int, int]) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise SeOnnxError("reading image folders needs Pillow: pip install 'se-onnx[train]' (or pillow)") from None

    try:
        with Image.open(file) as image:
            image = image.convert("RGB" if rgb else "L")
            scale = resize / min(image.size)
            width, height = max(size[1], round(image.width * scale)), max(size[0], round(image.height * scale))
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            left, top = (image.width - size[1]) // 2, (image.height - size[0]) // 2
            image = image.crop((left, top, left + size[1], top + size[0]))
            array = np.asarray(image, np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as error:
        raise SeOnnxError(f"{file}: not a readable image ({' '.join(str(error).split())})") from None
    return array.transpose(2, 0, 1) if rgb else array[None]


def _normalisation(options: ImageOptions, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """--mean and --std, checked together: what is wrong with both is said at once, not run by run."""
    problems = []
    for option, values in (("--mean", options.mean), ("--std", options.std)):
        if len(values) != channels:
            problems.append(f"{option} has {len(values)} values")
    if any(value <= 0 for value in options.std):
        problems.append("--std must be positive")
    if not problems:
        return tuple(options.mean), tuple(options.std)
    defaults = tuple(options.mean) == IMAGENET_MEAN or tuple(options.std) == IMAGENET_STD
    why = " (the defaults are ImageNet's, for RGB)" if channels == 1 and defaults else ""
    example = " ".join(["0.5"] * channels)
    raise SeOnnxError(
        f"the model takes {channels} channel{'s' if channels > 1 else ''}{why}: {'; '.join(problems)}; "
        f"pass one value per channel to both, e.g. --mean {example} --std {example}"
    )
