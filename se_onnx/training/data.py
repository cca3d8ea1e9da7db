"""Feeds a `se_onnx.runtime.datasets.Dataset` to PyTorch through a `DataLoader`: a batch read (an
image folder's decoded) in one call in a worker process, augmented, and split among the processes
of a distributed run.

Every random choice of sample i in epoch e comes from a generator seeded from (seed, e, i) alone,
so what a sample looks like does not depend on the worker count, the batch it falls in, the
process that reads it, or whether the run was resumed."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from se_onnx.errors import SeOnnxError
from se_onnx.runtime.datasets import Dataset
from se_onnx.training.options import AUGMENTS

# The random-resized crop's share of the image's area: milder than ImageNet training's 0.08, as
# fine-tuning starts from features that already fit and small images have little to spare.
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio, width over height, drawn log-uniform
# torchvision's number of tries at a crop that fits before it takes the whole image.
CROP_ATTEMPTS = 10

Sample = tuple[torch.Tensor, torch.Tensor]


class TorchDataset(torch.utils.data.Dataset[Sample]):
    """A runtime `Dataset` as a torch one: (x float32, y int64 scalar) pairs, augmented per epoch.

    `__getitems__` reads a whole batch in one `data.read` call (the DataLoader calls it when it
    exists), so that an image folder decodes a batch at a time in the worker that loads it."""

    def __init__(self, data: Dataset, *, augment: str = "none", seed: int = 0) -> None:
        if augment not in AUGMENTS:
            raise SeOnnxError(f"--augment must be one of {', '.join(AUGMENTS)}, not {augment!r}")
        if augment == "flip-crop" and len(data.sample_shape) != 3:
            shape = " × ".join(map(str, data.sample_shape))
            raise SeOnnxError(f"--augment flip-crop takes images (C × H × W samples); these samples are {shape}")
        self.data, self.augment, self.seed = data, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the samples get (set before iterating a loader)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        order = np.asarray(indices, np.int64)
        x = torch.from_numpy(np.asarray(self.data.read(order), np.float32))
        y = torch.from_numpy(np.asarray(self.data.y[order], np.int64))
        if self.augment == "flip-crop":
            x = torch.stack([_flip_crop(sample, self._generator(int(i))) for sample, i in zip(x, order)])
        return list(zip(x, y))

    def _generator(self, index: int) -> torch.Generator:
        """Sample `index`'s random stream in this epoch, from (seed, epoch, index) alone."""
        entropy = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(entropy))


def _flip_crop(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random-resized crop of the C × H × W `image`, back at H × W, flipped left to right half
    the time. On normalised values: cropping, bilinear resizing and flipping commute with a
    per-channel scale and shift."""
    height, width = image.shape[-2:]
    top, left, crop_height, crop_width = _crop_box(height, width, generator)
    crop = image[:, top : top + crop_height, left : left + crop_width]
    if (crop_height, crop_width) != (height, width):
        crop = F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    if float(torch.rand((), generator=generator)) < 0.5:
        crop = crop.flip(-1)
    return crop


def _crop_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """Top, left, height and width of a crop of random area share and aspect ratio (torchvision's
    RandomResizedCrop: a few tries at one that fits, else the whole image)."""
    log_ratios = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(CROP_ATTEMPTS):
        scale, log_ratio, top_draw, left_draw = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        area = height * width * (CROP_SCALE[0] + scale * (CROP_SCALE[1] - CROP_SCALE[0]))
        ratio = math.exp(log_ratios[0] + log_ratio * (log_ratios[1] - log_ratios[0]))
        crop_width, crop_height = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top, left = int(top_draw * (height - crop_height + 1)), int(left_draw * (width - crop_width + 1))
            return top, left, crop_height, crop_width
    return 0, 0, height, width


class _Strided(Sampler[int]):
    """Rank r of `world_size`'s share of an evaluation: samples r, r + W, r + 2W, … without the
    padding of `DistributedSampler`, so that sums over the ranks count each sample once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: TorchDataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int,
    pin_memory: bool,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of `batch_size` of rank `rank`'s share of `dataset`; shuffled for training, in a
    permutation of (seed, epoch) alone (see `set_epoch`); `workers` processes load them (0: this
    one).

    Training shuffles through `DistributedSampler` even in one process: rank r takes every W-th
    sample of the permutation, so the ranks' i-th batches together are one process's i-th batch
    of batch_size × W (when W divides the data; else the last batches repeat a few samples).
    Evaluation gives each rank every W-th sample, none twice: ranks may differ by one batch."""
    if batch_size < 1:
        raise SeOnnxError(f"--batch-size must be at least 1, not {batch_size}")
    if workers < 0:
        raise SeOnnxError(f"--workers must be at least 0 (0 loads in the main process), not {workers}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of {world_size} processes")
    sampler: Sampler[int]
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = _Strided(len(dataset), rank, world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        # New workers each epoch, which copy the dataset with the epoch just set on it.
        persistent_workers=False,
        # The loader draws its workers' base seed from this, not from the global generator, which
        # it would otherwise advance once per epoch; nothing here uses the workers' seeds.
        generator=torch.Generator().manual_seed(seed),
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Make `loader`'s next pass epoch `epoch`: its shuffle and its augmentation."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    dataset = loader.dataset
    if isinstance(dataset, TorchDataset):
        dataset.set_epoch(epoch)
