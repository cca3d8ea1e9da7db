"""benchmarks/study_fashion_mnist.py: its data conversion, statistics and model on their own, and the
whole study in --quick mode on a fake Fashion-MNIST (gzipped IDX files written here)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from benchmarks import study_fashion_mnist as study
from benchmarks.study_common import paired_interval, t_quantile
from models.build_samples import cifar_resnet
from se_onnx.cli import main


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion_mnist(folder: Path, train: int = 64, test: int = 32) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_the_idx_files_become_normalised_npz_files(tmp_path):
    source = fake_fashion_mnist(tmp_path / "data", train=100, test=50)
    images = study.read_idx(source / "train-images-idx3-ubyte.gz")
    assert images.shape == (100, 28, 28) and images.dtype == np.uint8
    paths = study.prepare_data(source, tmp_path, train_subset=40, val_subset=20)
    with np.load(paths["train"]) as train, np.load(paths["test"]) as test, np.load(paths["val"]) as val:
        assert train["x"].shape == (40, 1, 28, 28) and train["x"].dtype == np.float32 and train["y"].dtype == np.int64
        assert np.bincount(train["y"]).tolist() == [4] * 10  # stratified
        assert len(test["y"]) == 50 and len(val["y"]) == 20
        mean, std = images.mean() / 255, images.std() / 255  # all training images' statistics
        first = (study.read_idx(source / "t10k-images-idx3-ubyte.gz")[0] / 255 - mean) / std
        assert np.allclose(test["x"][0, 0], first, atol=1e-5)
    assert study.prepare_data(source, tmp_path, 0, 0)["val"] == tmp_path / "test.npz"  # 0: every image


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(SystemExit, match="dataset-fashion-mnist.*github.com/zalandoresearch/fashion-mnist"):
        study.main(["--data", str(tmp_path), "--work", str(tmp_path / "work")])


def test_statistics():
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-5)
    d = paired_interval([0.01, 0.02, 0.0, 0.03, 0.01])
    half = t_quantile(0.975, 4) * np.std([0.01, 0.02, 0.0, 0.03, 0.01], ddof=1) / np.sqrt(5)
    assert (d["low"], d["high"]) == pytest.approx((0.014 - half, 0.014 + half))
    assert (d["positive"], d["negative"]) == (4, 0)
    assert paired_interval([0.01])["low"] is None


def test_the_model_is_an_untrained_resnet_with_residual_branches(tmp_path):
    model = cifar_resnet(seed=1)
    onnx.checker.check_model(model, full_check=True)
    bn = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("bn_")}
    assert all(np.all(v == (1 if n.endswith(("weight", "var")) else 0)) for n, v in bn.items())
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0].shape == (2, 10)
    assert not np.array_equal(cifar_resnet(seed=2).graph.initializer[0].raw_data, model.graph.initializer[0].raw_data)
    onnx.save(model, tmp_path / "base.onnx")
    assert main(["insert", str(tmp_path / "base.onnx"), "-o", str(tmp_path / "se.onnx"), "--where", "residual"]) == 0


@pytest.mark.slow
def test_the_quick_study_runs(tmp_path, capsys):
    pytest.importorskip("torch")
    source = fake_fashion_mnist(tmp_path / "data")
    out = tmp_path / "study.json"
    assert study.main(["--data", str(source), "--work", str(tmp_path / "work"), "--quick", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| (a) + SE 0.0625 − base |" in table and "| (b) + SE fine-tuned − control |" in table
    record = json.loads(out.read_text())
    assert [row["seed"] for row in record["rows"]] == [0]
    assert set(record["rows"][0]["top1"]) == set(study.ARMS)
    cost = record["summary"]["cost"]
    assert cost["se_0.25"]["parameters"] > cost["se_0.0625"]["parameters"] > cost["base"]["parameters"]
