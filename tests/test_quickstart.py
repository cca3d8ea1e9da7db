"""The quick start (docs/quickstart.md) end to end on a small generated data set: the bundled trained
classifier well above chance, insert → train (SE blocks only) → evaluate --compare → serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.make_dataset import CLASSES, make_shapes, write_npz
from se_onnx.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = str(ROOT / "models" / "classifier_tiny.onnx")
CHANCE = 1 / len(CLASSES)


def test_the_data_set_is_deterministic_and_balanced():
    x, y = make_shapes(60, seed=3)
    again, labels = make_shapes(60, seed=3)
    assert x.dtype == np.float32 and x.shape == (60, 3, 16, 16) and y.dtype == np.int64
    assert np.array_equal(x, again) and np.array_equal(y, labels)
    assert np.bincount(y).tolist() == [10] * len(CLASSES)
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 2
    assert not np.array_equal(make_shapes(60, seed=4)[0], x)


def test_the_sample_classifier_is_trained():
    x, y = make_shapes(300, seed=1)
    scores = ort.InferenceSession(CLASSIFIER, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert float((scores.argmax(1) == y).mean()) > 3 * CHANCE  # about 0.65 against a chance of 0.17


def test_the_journey(tmp_path, capsys):
    pytest.importorskip("torch")
    train, val = tmp_path / "shapes_train.npz", tmp_path / "shapes_val.npz"
    write_npz(train, *make_shapes(600, seed=0))
    write_npz(val, *make_shapes(300, seed=1))
    with_se, trained = tmp_path / "cls_se.onnx", tmp_path / "serve" / "cls_se_trained.onnx"
    trained.parent.mkdir()

    assert main(["insert", CLASSIFIER, "-o", str(with_se)]) == 0
    assert "3 SE blocks (conv placement, opset 13, float32, +742 parameters)" in capsys.readouterr().out

    args = ["train", str(with_se), "--data", str(train), "--val", str(val), "--epochs", "2", "--lr", "0.01"]
    assert main([*args, "--no-progress", "--json", "-o", str(trained)]) == 0
    captured = capsys.readouterr()
    assert "se-onnx: warning" not in captured.err  # a trained model: no word of an untrained one
    epochs = json.loads(captured.out)["epochs"]
    assert epochs[0]["val_accuracy"] > 3 * CHANCE and epochs[-1]["val_accuracy"] > 3 * CHANCE

    compare = ["evaluate", CLASSIFIER, "--compare", str(trained), "--data", str(val), "--runs", "5"]
    assert main([*compare, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["a"]["top1"] == pytest.approx(epochs[0]["val_accuracy"])  # identity init: same model
    assert report["b"]["top1"] == pytest.approx(epochs[-1]["val_accuracy"])  # ONNX Runtime agrees with PyTorch
    assert report["difference"]["parameters"] == 742

    from tests.service_helpers import serve

    x, _ = make_shapes(4, seed=1)
    with serve(trained.parent) as client:
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        response = client.post("/v2/models/cls_se_trained/infer", json=body)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    expected = ort.InferenceSession(str(trained), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected, rtol=1e-5, atol=1e-6)
