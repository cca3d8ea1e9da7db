"""Generates the quick start's data set: small noisy images of six procedurally drawn patterns.

Each 3 × 16 × 16 image is one pattern (horizontal, vertical or diagonal stripes, a checkerboard, a
ring, a cross) at a random frequency and phase, in a random colour mixed over the three channels,
on a random background colour, under Gaussian noise; the label is the pattern. A pattern is read
from the spatial layout of whichever channels carry it, while the colours change from image to
image, which is what channel attention is for. Images are standardised (about mean 0, std 1 per
channel), so they go into a model as they are: the .npz files hold `x` (N × 3 × 16 × 16 float32)
and `y` (N int64 labels), the layout `se-onnx train` and `se-onnx evaluate` read.

Needs numpy only, and the same seed gives the same bytes on every machine:

    python models/make_dataset.py [--output-dir data] [--train 2000] [--val 500] [--seed 0]

writes data/shapes_train.npz and data/shapes_val.npz (about 8 MB together at the defaults).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = ("horizontal", "vertical", "diagonal", "checkerboard", "ring", "cross")
SIZE = 16
NOISE = 0.35  # std of the pixel noise, against patterns of contrast 0.5 to 1


def make_shapes(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (N × 3 × 16 × 16 float32, standardised) and their labels (N int64), balanced
    over the classes in a shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASSES)).astype(np.int64)
    rows, columns = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    images = np.empty((count, 3, SIZE, SIZE), np.float32)
    for index, label in enumerate(labels):
        mask = _pattern(int(label), rows, columns, rng)
        background = rng.uniform(0, 1, 3)
        direction = rng.normal(0, 1, 3)  # the pattern's colour: a random direction from the background
        colour = rng.uniform(0.5, 1.0) * direction / np.linalg.norm(direction)
        image = background[:, None, None] + colour[:, None, None] * mask
        images[index] = image + rng.normal(0, NOISE, image.shape)
    # Standardised with fixed constants (not the sample's own statistics): every split alike.
    return (images - 0.5) / 0.55, labels


def _pattern(label: int, rows: np.ndarray, columns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 16 × 16 mask in [0, 1] of the class `label`, at a random scale and position."""
    period, phase = rng.uniform(3.0, 6.0), rng.uniform(0, 2 * np.pi)
    wave = 2 * np.pi / period
    centre = rng.uniform(5, SIZE - 5, 2)
    name = CLASSES[label]
    if name == "horizontal":
        return (np.sin(wave * rows + phase) > 0).astype(np.float64)
    if name == "vertical":
        return (np.sin(wave * columns + phase) > 0).astype(np.float64)
    if name == "diagonal":
        sign = rng.choice((-1.0, 1.0))
        return (np.sin(wave * (rows + sign * columns) / np.sqrt(2) + phase) > 0).astype(np.float64)
    if name == "checkerboard":
        return ((np.sin(wave * rows + phase) > 0) ^ (np.sin(wave * columns + phase) > 0)).astype(np.float64)
    if name == "ring":
        radius = np.hypot(rows - centre[0], columns - centre[1])
        return (np.abs(radius - rng.uniform(3.0, 5.0)) < 1.0).astype(np.float64)
    width = rng.uniform(1.0, 2.0)  # cross
    return ((np.abs(rows - centre[0]) < width) | (np.abs(columns - centre[1]) < width)).astype(np.float64)


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x, y=y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="data", help="where to write the .npz files (default data)")
    parser.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--val", type=int, default=500, help="validation images (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training split; validation uses seed + 1")
    args = parser.parse_args()
    output = Path(args.output_dir)
    for split, count, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        x, y = make_shapes(count, seed)
        write_npz(output / f"shapes_{split}.npz", x, y)
        print(f"{output / f'shapes_{split}.npz'}: {count} images of {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
