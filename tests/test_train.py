"""Tests of `se-onnx train`: the PyTorch runner matches ONNX Runtime, training lowers the loss and
changes only what it should, the written model keeps everything else, and every error is clear."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

from models import build_samples  # noqa: E402
from se_onnx import SeOnnxError, insert_se, save_model  # noqa: E402
from se_onnx.cli import main  # noqa: E402
from se_onnx.passes.insert import InsertOptions  # noqa: E402
from se_onnx.runtime.datasets import Dataset  # noqa: E402
from se_onnx.training.graph_module import OnnxModule  # noqa: E402
from se_onnx.training.loop import TrainOptions, train_model, trainable_initializers  # noqa: E402
from tests.se_variants import feeds_for, ort_outputs  # noqa: E402

FAST = TrainOptions(epochs=3, lr=0.05, batch_size=16, progress=False)


def _with_se(proto: onnx.ModelProto, **options) -> ir.Model:
    model, _ = insert_se(ir.from_proto(proto), InsertOptions(where="conv", **options))
    return model


def _data(shape, classes: int, samples: int = 64, seed: int = 0) -> Dataset:
    """Inputs whose label is the quadrant (of the first channel) with the largest mean."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, *shape)).astype(np.float32)
    flat = x[:, 0].reshape(samples, -1)
    y = np.argmax(np.stack([part.mean(1) for part in np.array_split(flat, classes, axis=1)], 1), 1)
    return Dataset(x, y.astype(np.int64))


def _initializers(model: ir.Model | onnx.ModelProto) -> dict[str, np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


@pytest.mark.parametrize("sample", ["resnet_like", "mobilenet_se_like", "depthwise_separable", "conv1d_model"])
@pytest.mark.parametrize("opset", [13, 18])
def test_torch_runner_matches_onnx_runtime(sample, opset):
    proto = getattr(build_samples, sample)(opset=opset)
    model = _with_se(proto, init="random")
    feeds = feeds_for(proto, batch=2)
    expected = ort_outputs(ir.to_proto(model), feeds)[0]
    actual = OnnxModule(model)(torch.from_numpy(next(iter(feeds.values()))))[0].detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_training_lowers_the_loss_and_changes_only_the_se_weights():
    model = _with_se(build_samples.tiny_conv(opset=13))
    before = _initializers(model)
    trained, report = train_model(model, _data((1, 8, 8), 4), None, FAST)
    assert report.epochs[-1].train_loss < report.baseline.train_loss
    se_names, _ = trainable_initializers(model, "se")
    after = _initializers(trained)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and changed <= set(se_names)
    untouched = _initializers(model)  # the input model is not modified
    assert all(np.array_equal(before[name], array) for name, array in untouched.items())


def test_train_all_changes_layer_weights_but_not_batchnorm_statistics():
    model = _with_se(build_samples.resnet_like(opset=13))
    before = _initializers(model)
    options = TrainOptions(epochs=1, lr=0.01, batch_size=16, progress=False, train="all")
    trained, _ = train_model(model, _data((3, 32, 32), 10, samples=32), None, options)
    after = _initializers(trained)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    statistics = {n.inputs[i].name for n in model.graph if n.op_type == "BatchNormalization" for i in (3, 4)}
    assert any("conv" in name and "/se/" not in name for name in changed)
    assert not changed & statistics


def test_training_is_deterministic_with_a_seed():
    model = _with_se(build_samples.tiny_conv(opset=13))
    data = _data((1, 8, 8), 4)
    runs = [_initializers(train_model(model, data, None, FAST)[0]) for _ in range(2)]
    other = _initializers(train_model(model, data, None, TrainOptions(**{**FAST.__dict__, "seed": 1}))[0])
    assert all(np.array_equal(runs[0][name], runs[1][name]) for name in runs[0])
    assert any(not np.array_equal(runs[0][name], other[name]) for name in runs[0])


def test_saturated_gates_are_warned_about():
    model = _with_se(build_samples.tiny_conv(opset=13), init="saturated")
    with pytest.warns(UserWarning, match="saturated gate"):
        _, report = train_model(model, _data((1, 8, 8), 4), None, TrainOptions(epochs=1, progress=False))
    assert report.saturated_gates


def test_cli_writes_the_model_back_keeping_everything_but_the_se_weights(tmp_path):
    source = tmp_path / "in" / "model_se.onnx"
    source.parent.mkdir()
    build_samples.save_with_external_data(ir.to_proto(_with_se(build_samples.resnet_like(opset=18))), source)
    x = _data((3, 32, 32), 10, samples=48)
    np.savez(tmp_path / "train.npz", x=x.x, y=x.y)
    output, plot = tmp_path / "out" / "trained.onnx", tmp_path / "history.png"
    code = main(
        [
            "train",
            str(source),
            "-o",
            str(output),
            "--data",
            str(tmp_path / "train.npz"),
            "--val",
            str(tmp_path / "train.npz"),
            "--epochs",
            "1",
            "--lr",
            "0.05",
            "--no-progress",
            "--plot",
            str(plot),
        ]
    )
    assert code == 0 and plot.stat().st_size > 1000
    onnx.checker.check_model(str(output), full_check=True)
    assert (output.parent / "trained.onnx.data").is_file()  # external data stays external
    original, trained = onnx.load(source), onnx.load(output)
    assert trained.graph.node == original.graph.node
    assert trained.graph.input == original.graph.input and trained.graph.output == original.graph.output
    assert trained.opset_import == original.opset_import
    before, after = _initializers(original), _initializers(trained)
    assert before.keys() == after.keys()
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and all("/se/" in name and "gain" not in name for name in changed)
    ort_outputs(str(output), feeds_for(original))


def _interrupting_step(original_step, interrupt_at: int):
    """`original_step`, except that its `interrupt_at`-th call raises KeyboardInterrupt (Ctrl-C)."""
    calls = 0

    def step(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == interrupt_at:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    return step


def test_ctrl_c_keeps_the_last_completed_epoch_and_nothing_partial(tmp_path, monkeypatch):
    model_path = tmp_path / "model.onnx"
    save_model(_with_se(build_samples.tiny_conv(opset=13)), model_path)
    data = _data((1, 8, 8), 4)
    np.savez(tmp_path / "d.npz", x=data.x, y=data.y)
    steps_per_epoch = 4  # 64 samples, batches of 16
    # Taken once: each round wraps AdamW's own step, not the previous round's wrapper.
    original_step = torch.optim.AdamW.step
    for interrupt_at, kept in ((steps_per_epoch + 2, True), (2, False)):
        monkeypatch.setattr(torch.optim.AdamW, "step", _interrupting_step(original_step, interrupt_at))
        output = tmp_path / f"out_{interrupt_at}" / "trained.onnx"
        args = [
            "train",
            str(model_path),
            "-o",
            str(output),
            "--data",
            str(tmp_path / "d.npz"),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--no-progress",
        ]
        assert main(args) == 130
        assert output.is_file() == kept
        if kept:
            onnx.checker.check_model(str(output), full_check=True)
        leftovers = (
            [name for name in os.listdir(output.parent) if name.startswith(".se-onnx-")]
            if output.parent.exists()
            else []
        )
        assert not leftovers


def _feature_map_model() -> onnx.ModelProto:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3, 3], np.ones(36, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _unsupported_op_model() -> onnx.ModelProto:
    proto = build_samples.tiny_conv(opset=13)
    node = proto.graph.node[-1]
    extra = helper.make_node("Erf", [node.output[0]], ["erf_out"], name="my_erf")
    final = helper.make_node("Identity", ["erf_out"], ["output"])
    node.output[0] = "pre_output"
    extra.input[0] = "pre_output"
    proto.graph.node.extend([extra, final])
    return proto


@pytest.mark.parametrize(
    "model, data, message",
    [
        (_feature_map_model, ((1, 8, 8), 4), "not class scores"),
        (lambda: ir.to_proto(_with_se(_unsupported_op_model())), ((1, 8, 8), 4), "Erf \\(e.g. node 'my_erf'\\)"),
        (lambda: build_samples.tiny_conv(opset=13), ((1, 8, 8), 4), "no SE block"),
        (
            lambda: ir.to_proto(_with_se(build_samples.tiny_conv(opset=13))),
            ((1, 6, 6), 4),
            "x is \\[64, 1, 6, 6\\], the model takes \\[N, 1, 8, 8\\]",
        ),
        (lambda: ir.to_proto(_with_se(build_samples.tiny_conv(opset=13))), ((1, 8, 8), 7), "labels run from 0 to 6"),
    ],
)
def test_errors_are_clear_and_write_nothing(tmp_path, capsys, model, data, message):
    path = tmp_path / "model.onnx"
    onnx.save(model() if callable(model) else model, path)
    sample = _data(*data)
    np.savez(tmp_path / "d.npz", x=sample.x, y=sample.y)
    output = tmp_path / "out.onnx"
    assert main(["train", str(path), "-o", str(output), "--data", str(tmp_path / "d.npz"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert not output.exists()


def test_non_float32_models_are_refused():
    model = _with_se(build_samples.tiny_conv(opset=13, dtype="float16"))
    with pytest.raises(SeOnnxError, match="float32|FLOAT16|fp32"):
        train_model(model, _data((1, 8, 8), 4), None, FAST)


def _as_classifier(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The feature-map model with GlobalAveragePool → Flatten after it, so it outputs class scores."""
    graph = proto.graph
    channels = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    graph.node.extend(
        [
            helper.make_node("GlobalAveragePool", [graph.output[0].name], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["scores"]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", channels]))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _constant_nodes(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {node.output[0]: node for node in proto.graph.node if node.op_type == "Constant"}


def test_constant_node_weights_train_and_are_written_back_into_their_nodes(tmp_path):
    from tests import exporter_styles

    proto = _as_classifier(exporter_styles.paddle_model(se=True))
    assert not proto.graph.initializer  # every weight is a Constant node
    path, output = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(proto, path)
    sample = _data((3, *exporter_styles.SPATIAL), exporter_styles.CHANNELS, samples=32)
    np.savez(tmp_path / "d.npz", x=sample.x, y=sample.y)
    assert (
        main(
            [
                "train",
                str(path),
                "-o",
                str(output),
                "--data",
                str(tmp_path / "d.npz"),
                "--epochs",
                "2",
                "--lr",
                "0.05",
                "--no-progress",
            ]
        )
        == 0
    )
    trained = onnx.load(output)
    onnx.checker.check_model(trained, full_check=True)
    before, after = _constant_nodes(proto), _constant_nodes(trained)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name].SerializeToString() != after[name].SerializeToString()}
    assert changed and all("se/fc" in name for name in changed), changed
    # Nodes stay in their form (a tensor stays a tensor, the user's value_float stays one), in order.
    assert [n.attribute[0].name for n in proto.graph.node if n.op_type == "Constant"] == [
        n.attribute[0].name for n in trained.graph.node if n.op_type == "Constant"
    ]
    assert [(n.op_type, list(n.input), list(n.output)) for n in proto.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in trained.graph.node
    ]
    feeds = {"x": sample.x[:4]}
    torch_scores = OnnxModule(ir.from_proto(trained))(torch.from_numpy(sample.x[:4]))[0].detach().numpy()
    np.testing.assert_allclose(torch_scores, ort_outputs(trained, feeds)[0], rtol=1e-4, atol=1e-5)


def test_se_blocks_inside_an_if_body_are_refused_naming_the_op():
    from tests import exporter_styles

    model = ir.from_proto(_as_classifier(exporter_styles.if_model()))
    with pytest.raises(SeOnnxError, match=r"in the body of the If node 'pick' .*not If bodies"):
        trainable_initializers(model, "se")


def test_nothing_to_train_is_a_clear_error():
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
            "no_weights",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    with pytest.raises(SeOnnxError, match="no float weight to train"):
        train_model(ir.from_proto(proto), _data((4, 8, 8), 4), None, dataclasses.replace(FAST, train="all"))


def test_the_trainable_identity_trains_both_layers_of_a_block():
    # With b1 = 0 the block's one hidden unit on this model is dead under ReLU: only fc2's bias moved.
    model = _with_se(build_samples.tiny_conv(opset=13))
    trained, report = train_model(model, _data((1, 8, 8), 4), None, FAST)
    before, after = _initializers(model), _initializers(trained)
    unchanged = [name for name in report.trained_initializers if np.array_equal(before[name], after[name])]
    assert len(report.trained_initializers) == 4 and not unchanged, unchanged
