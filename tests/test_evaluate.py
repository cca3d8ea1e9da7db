"""Tests of `se-onnx evaluate`: accuracy on data with known answers, image folders, the comparison
report (table, JSON, PNG), FLOPs and parameters, and its errors. No PyTorch needed."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from models import build_samples
from se_onnx import SeOnnxError, insert_se, save_model
from se_onnx.cli import main
from se_onnx.passes.insert import InsertOptions
from se_onnx.runtime.evaluate import count_cost


def _mean_classifier(classes: int, size: int = 4) -> onnx.ModelProto:
    """Scores = each channel's spatial mean, so the right answers are known."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["scores"], axis=1),
        ],
        "means",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", classes, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_accuracy_on_data_with_known_answers(tmp_path, capsys):
    classes, samples = 7, 40
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, classes, 4, 4)).astype(np.float32)
    scores = x.mean((2, 3))
    order = np.argsort(-scores, axis=1)
    # A quarter labelled with the top class, a quarter with the 3rd, half with the last (never in the top 5).
    y = np.concatenate([order[:10, 0], order[10:20, 2], order[20:, -1]])
    model, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(_mean_classifier(classes), model)
    np.savez(data, x=x, y=y)
    assert main(["evaluate", str(model), "--data", str(data), "--json", "--runs", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1"] == pytest.approx(0.25) and report["top5"] == pytest.approx(0.5)
    assert report["samples"] == samples and report["latency_ms"] > 0
    assert report["parameters"] == 0


def test_image_folders_are_resized_cropped_and_normalised(tmp_path, capsys):
    from PIL import Image

    colours = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # sorted: class 0 blue, 1 green, 2 red
    for name, colour in colours.items():
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (20 + 7 * k, 16), colour).save(folder / f"{k}.png")
    # Channels in BGR order, so channel i is the colour of class i and the right answer is known.
    proto = _mean_classifier(3, size=8)
    proto.graph.node.insert(0, helper.make_node("Gather", ["x", "bgr"], ["x_bgr"], axis=1))
    proto.graph.node[1].input[0] = "x_bgr"
    proto.graph.initializer.append(helper.make_tensor("bgr", TensorProto.INT64, [3], [2, 1, 0]))
    model = tmp_path / "m.onnx"
    onnx.save(proto, model)
    assert main(["evaluate", str(model), "--data", str(tmp_path / "images"), "--json", "--runs", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 1.0
    # A crop that does not fit the model's input is refused.
    assert main(["evaluate", str(model), "--data", str(tmp_path / "images"), "--crop", "6"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_compare_reports_accuracy_latency_parameters_and_flops(tmp_path, capsys):
    original = build_samples.resnet_like(opset=13)
    plain, with_se = tmp_path / "plain.onnx", tmp_path / "se.onnx"
    onnx.save(original, plain)
    model, report = insert_se(ir.from_proto(original), InsertOptions())
    save_model(model, with_se)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((16, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 16))
    plot = tmp_path / "compare.png"
    args = ["evaluate", str(plain), "--compare", str(with_se), "--data", str(tmp_path / "d.npz"), "--runs", "5"]
    assert main([*args, "--json", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    difference = result["difference"]
    # Identity init: the same predictions; the cost is the blocks' weights (a gate's fixed gain is no parameter).
    assert difference["top1"] == 0 and difference["top5"] == 0
    assert difference["parameters"] == report.parameters_added
    assert difference["flops"] > 0 and difference["latency_ratio"] > 0
    assert plot.stat().st_size > 1000
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "B − A" in table and "plain.onnx" in table and "se.onnx" in table


def test_compare_takes_several_models_each_against_the_first(tmp_path, capsys):
    """The base, +SE and +ECA in one table, JSON and figure; the two-model keys still describe B."""
    original = build_samples.resnet_like(opset=13)
    paths = [tmp_path / "base.onnx", tmp_path / "se.onnx", tmp_path / "eca.onnx"]
    onnx.save(original, paths[0])
    added = []
    for path, block in zip(paths[1:], ("se", "eca")):
        model, report = insert_se(ir.from_proto(original), InsertOptions(block=block))
        save_model(model, path)
        added.append(report.parameters_added)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 8))
    plot = tmp_path / "compare.png"
    args = ["evaluate", str(paths[0]), "--compare", *map(str, paths[1:]), "--data", str(tmp_path / "d.npz")]
    assert main([*args, "--runs", "4", "--json", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in result["models"]] == list(map(str, paths))
    assert [d["parameters"] for d in result["differences"]] == added and added[0] != added[1]
    assert all(d["top1"] == 0 and d["latency_ratio"] > 0 for d in result["differences"])  # identity inits
    assert result["b"]["model"] == str(paths[1]) and result["difference"]["parameters"] == added[0]
    assert plot.stat().st_size > 1000
    assert main([*args, "--runs", "4"]) == 0
    table = capsys.readouterr().out
    assert "B − A" in table and "C − A" in table and "eca.onnx" in table


def test_flops_and_parameters_of_a_conv_model(tmp_path):
    path = tmp_path / "tiny.onnx"
    # Conv 1→4, 3×3, pad 1 on 8×8 with a folded BatchNorm (a bias), Relu, GlobalAveragePool, Flatten.
    onnx.save(build_samples.tiny_conv(opset=13), path)
    parameters, flops = count_cost(path, [1, 8, 8])
    assert parameters == 4 * 9 + 4
    conv, relu, pool = 2 * (4 * 8 * 8) * 9, 4 * 8 * 8, 4
    assert flops == conv + relu + pool


@pytest.mark.parametrize(
    "x_shape, labels, message",
    [
        ((4, 3, 4, 4), [0, 1, 2, 3], "x is \\[4, 3, 4, 4\\], the model takes \\[N, 5, 4, 4\\]"),
        ((4, 5, 4, 4), [0, 1, 2, 9], "labels run from 0 to 9, but the model scores 5 classes"),
        ((4, 5, 4, 4), [0, 1, 2], "x has 4 samples, y 3 labels"),
    ],
)
def test_data_that_does_not_fit_is_refused(tmp_path, capsys, x_shape, labels, message):
    import re

    onnx.save(_mean_classifier(5), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros(x_shape, np.float32), y=np.array(labels))
    assert main(["evaluate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_model_without_class_scores_is_refused(tmp_path, capsys):
    onnx.save(build_samples.tiny_conv(opset=13), tmp_path / "ok.onnx")
    proto = build_samples.tiny_conv(opset=13)
    del proto.graph.node[-2:]  # keep the conv's feature map as the output
    proto.graph.output[0].CopyFrom(
        helper.make_tensor_value_info(proto.graph.node[-1].output[0], TensorProto.FLOAT, ["N", 4, 8, 8])
    )
    onnx.save(proto, tmp_path / "features.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 8, 8), np.float32), y=np.array([0, 1]))
    assert main(["evaluate", str(tmp_path / "features.onnx"), "--data", str(tmp_path / "d.npz")]) == 2
    assert "not class scores" in capsys.readouterr().err


def test_train_without_pytorch_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as in a core install
    monkeypatch.delitem(sys.modules, "se_onnx.training.loop", raising=False)
    monkeypatch.delitem(sys.modules, "se_onnx.training.graph_module", raising=False)
    onnx.save(_mean_classifier(5), tmp_path / "m.onnx")
    args = ["train", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--data", str(tmp_path / "d.npz")]
    assert main(args) == 2
    assert "pip install 'se-onnx[train]'" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def _pooling_classifier(channels: int, classes: int) -> onnx.ModelProto:
    """GlobalAveragePool → Flatten → Gemm: `channels` inputs, `classes` scores."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [channels, classes], np.ones(channels * classes, np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["scores"]),
        ],
        "pooling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 4, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    "model_b, message",
    [
        (lambda: _pooling_classifier(3, 5), r"b\.onnx takes input \[N, 3, 4, 4\], .*a\.onnx \[N, 5, 4, 4\]"),
        (lambda: _pooling_classifier(5, 4), r"b\.onnx scores 4 classes, .*a\.onnx 5"),
    ],
)
def test_compare_refuses_a_model_of_another_signature(tmp_path, capsys, model_b, message):
    import re

    onnx.save(_mean_classifier(5), tmp_path / "a.onnx")
    onnx.save(model_b(), tmp_path / "b.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 5, 4, 4), np.float32), y=np.array([0, 1, 2, 3]))
    args = [
        "evaluate",
        str(tmp_path / "a.onnx"),
        "--compare",
        str(tmp_path / "b.onnx"),
        "--data",
        str(tmp_path / "d.npz"),
        "--runs",
        "2",
    ]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and "Traceback" not in error, error


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_plot_refuses_a_file_not_named_png(tmp_path, capsys, command):
    onnx.save(_mean_classifier(5), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 5, 4, 4), np.float32), y=np.array([0, 1, 2, 3]))
    data = ["--data", str(tmp_path / "d.npz"), "--plot", str(tmp_path / "x.txt")]
    args = (
        ["--compare", str(tmp_path / "m.onnx"), "--runs", "2"]
        if command == "evaluate"
        else ["-o", str(tmp_path / "o.onnx")]
    )
    assert main([command, str(tmp_path / "m.onnx"), *args, *data]) == 2
    assert "--plot writes a PNG" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]


def _colour_folders(root, names: list[str], images: int = 3):
    from PIL import Image

    for index, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for k in range(images):
            Image.new("RGB", (12, 10), (40 * index, 0, 0)).save(root / name / f"{k}.png")
    return root


def test_image_folders_are_decoded_a_batch_at_a_time(tmp_path, monkeypatch):
    from se_onnx.runtime import datasets

    root = _colour_folders(tmp_path / "images", ["a", "b", "c"])
    decoded = []
    original = datasets._image
    monkeypatch.setattr(datasets, "_image", lambda file, *args: decoded.append(file) or original(file, *args))
    signature = datasets.ClassifierSignature((3, 8, 8), 3)
    data = datasets.load_dataset(root, signature)
    assert len(data) == 9 and len(decoded) <= 1  # at most a first image, checked up front
    decoded.clear()
    batches = data.batches(4)
    x, y = next(batches)
    assert x.shape == (4, 3, 8, 8) and list(y) == [0, 0, 0, 1] and len(decoded) == 4
    assert [len(y) for _, y in batches] == [4, 1] and len(decoded) == 9


def test_validation_folders_are_labelled_by_the_training_classes(tmp_path):
    from se_onnx.runtime import datasets

    signature = datasets.ClassifierSignature((3, 8, 8), 3)
    train = datasets.load_dataset(_colour_folders(tmp_path / "train", ["a", "b", "c"]), signature)
    val = datasets.load_dataset(_colour_folders(tmp_path / "val", ["a", "c"]), signature, classes=train.classes)
    assert list(val.y) == [0, 0, 0, 2, 2, 2]  # "c" is class 2 although the folder is val's second
    _colour_folders(tmp_path / "val2", ["a", "d"])
    with pytest.raises(SeOnnxError, match="'d' are not among the training data's classes"):
        datasets.load_dataset(tmp_path / "val2", signature, classes=train.classes)
