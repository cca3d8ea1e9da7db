"""Tests of the training data pipeline: augmentation that depends on (seed, epoch, sample) alone,
the training and evaluation samplers of a distributed run, and image folders decoded in workers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from se_onnx import SeOnnxError  # noqa: E402
from se_onnx.runtime.datasets import ClassifierSignature, Dataset, load_dataset  # noqa: E402
from se_onnx.training.data import TorchDataset, make_loader, set_epoch  # noqa: E402


def _images(samples: int = 12, shape=(3, 8, 8)) -> Dataset:
    """Random images whose label is their index, so a batch says which samples it holds."""
    x = np.random.default_rng(0).standard_normal((samples, *shape)).astype(np.float32)
    return Dataset(x, np.arange(samples, dtype=np.int64))


def _pass(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over `loader`, its batches concatenated."""
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_none_returns_the_data_as_it_is():
    data = _images()
    x, y = TorchDataset(data).__getitems__([3, 0])[1]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.shape == ()
    np.testing.assert_array_equal(x.numpy(), data.x[0])
    assert int(y) == 0


def test_flip_crop_keeps_shape_and_dtype_and_changes_each_epoch():
    dataset = TorchDataset(_images(shape=(3, 8, 10)), augment="flip-crop", seed=1)
    first = [dataset[i][0] for i in range(4)]
    assert all(x.shape == (3, 8, 10) and x.dtype == torch.float32 for x in first)
    assert all(torch.equal(x, dataset[i][0]) for i, x in enumerate(first))  # the same epoch, the same samples
    dataset.set_epoch(1)
    assert all(not torch.equal(x, dataset[i][0]) for i, x in enumerate(first))
    assert not torch.equal(TorchDataset(_images(), augment="flip-crop", seed=2)[0][0], first[0])


def test_augmentation_does_not_depend_on_workers_or_batches():
    dataset = TorchDataset(_images(), augment="flip-crop", seed=3)
    options = {"shuffle": True, "seed": 3, "pin_memory": False}
    alone = make_loader(dataset, batch_size=4, workers=0, **options)
    parallel = make_loader(dataset, batch_size=5, workers=2, **options)
    for epoch in (0, 1):
        set_epoch(alone, epoch)
        set_epoch(parallel, epoch)
        x, y = _pass(alone)
        np.testing.assert_array_equal(x.numpy(), _pass(parallel)[0].numpy())
        np.testing.assert_array_equal(x[:1].numpy(), dataset[int(y[0])][0][None].numpy())
        if epoch == 0:
            first_order = y
    assert not torch.equal(first_order, y)  # each epoch its own shuffle


def test_ranks_batches_together_are_one_process_batch():
    dataset = TorchDataset(_images(samples=24))
    options = {"shuffle": True, "seed": 5, "workers": 0, "pin_memory": False}
    single = make_loader(dataset, batch_size=6, **options)
    ranks = [make_loader(dataset, batch_size=3, rank=rank, world_size=2, **options) for rank in (0, 1)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            set_epoch(loader, epoch)
        for (_, whole), *parts in zip(single, *ranks):
            assert sorted(whole.tolist()) == sorted(torch.cat([y for _, y in parts]).tolist())


def test_evaluation_reads_each_sample_once_across_ranks():
    dataset = TorchDataset(_images(samples=10))
    options = {"batch_size": 2, "shuffle": False, "seed": 0, "workers": 0, "pin_memory": False}
    shares = [_pass(make_loader(dataset, rank=rank, world_size=3, **options))[1].tolist() for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert _pass(make_loader(dataset, **options))[1].tolist() == list(range(10))


def test_flip_crop_refuses_samples_that_are_not_images():
    data = Dataset(np.zeros((4, 10), np.float32), np.zeros(4, np.int64))
    with pytest.raises(SeOnnxError, match="--augment flip-crop takes images .* samples are 10"):
        TorchDataset(data, augment="flip-crop")
    with pytest.raises(SeOnnxError, match="--augment must be one of none, flip-crop, not 'mixup'"):
        TorchDataset(data, augment="mixup")


@pytest.mark.parametrize(
    "options, flag",
    [({"batch_size": 0, "workers": 0}, "--batch-size"), ({"batch_size": 1, "workers": -1}, "--workers")],
)
def test_loader_errors_name_their_flags(options, flag):
    with pytest.raises(SeOnnxError, match=flag):
        make_loader(TorchDataset(_images()), shuffle=False, seed=0, pin_memory=False, **options)


def test_an_image_folder_decodes_in_workers(tmp_path):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for index in range(2):
            pixels = rng.integers(0, 256, (10, 12, 3), np.uint8)
            image.fromarray(pixels).save(tmp_path / label / f"{index}.png")
    data = load_dataset(tmp_path, ClassifierSignature((3, 8, 8), 2))
    dataset = TorchDataset(data, augment="flip-crop")
    options = {"batch_size": 2, "shuffle": False, "seed": 0, "pin_memory": False}
    x, y = _pass(make_loader(dataset, workers=2, **options))
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(x.numpy(), _pass(make_loader(dataset, workers=0, **options))[0].numpy())
