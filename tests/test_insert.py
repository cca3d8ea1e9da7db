"""Tests of the insertion pass: placement, opsets, dtypes, init, names, external data, errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import build_samples
from se_onnx import (
    InsertOptions,
    SeOnnxError,
    insert_se,
    load_model,
    save_model,
    verify,
)
from se_onnx.ir.se_block import (
    SATURATED_GATE_BIAS,
    TRAINABLE_GATE_BIAS,
    TRAINABLE_GATE_GAIN,
    SEWeights,
    squeeze_width,
)
from se_onnx.passes.find import find_se
from se_onnx.runtime.sessions import make_session, random_inputs

SAMPLES = {
    "resnet": build_samples.resnet_like,
    "vgg": build_samples.vgg_like,
    "dwsep": build_samples.depthwise_separable,
    "conv1d": build_samples.conv1d_model,
    "conv3d": build_samples.conv3d_model,
}


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.from_proto(proto)


def _save(model: ir.Model | onnx.ModelProto, path) -> str:
    if isinstance(model, onnx.ModelProto):
        onnx.save(model, path)
    else:
        save_model(model, path)
    return str(path)


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def _signature(model: ir.Model) -> tuple:
    return (
        [(v.name, v.dtype) for v in model.graph.inputs],
        [(v.name, v.dtype) for v in model.graph.outputs],
    )


@pytest.mark.parametrize("opset", [11, 13, 18, 21])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_identity_insert_keeps_outputs_on_every_sample(sample, dtype, opset, tmp_path):
    original = SAMPLES[sample](opset=opset, dtype=dtype)
    before = _save(original, tmp_path / "before.onnx")
    model, report = insert_se(_ir(original), InsertOptions(where="conv"))
    after = _save(model, tmp_path / "after.onnx")  # save_model runs the full checker

    assert report.blocks and report.opset == opset and report.dtype == dtype
    saved = onnx.load(after)
    assert {o.domain: o.version for o in saved.opset_import}.get("") == opset
    assert _signature(model) == _signature(_ir(original))
    added = len(model.graph) - len(original.graph.node)
    assert added == sum(len(block.nodes) for block in report.blocks)
    assert _ops(model).count("Gemm") - [n.op_type for n in original.graph.node].count("Gemm") == 2 * len(report.blocks)
    tolerance = 1e-3 if dtype == "float32" else 1e-2
    assert verify(before, after, rtol=tolerance, atol=tolerance, batch=2).passed


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
def test_nodes_follow_the_opset_signature(opset):
    model, _ = insert_se(_ir(build_samples.vgg_like(opset=opset)), InsertOptions(where="conv"))
    reduce_mean = next(n for n in model.graph if n.op_type == "ReduceMean")
    unsqueeze = next(n for n in model.graph if n.op_type == "Unsqueeze")
    assert ("axes" in reduce_mean.attributes) == (opset < 18)
    assert len(reduce_mean.inputs) == (1 if opset < 18 else 2)
    assert ("axes" in unsqueeze.attributes) == (opset < 13)
    assert reduce_mean.attributes["keepdims"].value == 0


def test_se_block_computes_senet_math(tmp_path):
    original = build_samples.vgg_like(opset=18)
    before = _save(original, tmp_path / "before.onnx")
    model, report = insert_se(
        _ir(original), InsertOptions(where="conv", nodes=(report_first_conv(original),), init="random", seed=3)
    )
    after = _save(model, tmp_path / "after.onnx")
    block = report.blocks[0]
    weights = {
        name: ir.from_proto(onnx.load(after)).graph.initializers[f"{block.name}/se/{name}"].const_value.numpy()
        for name in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
    }
    # Expose the block's input and output as extra graph outputs to check the block in isolation.
    probe = onnx.load(after)
    names = {n.name: n for n in probe.graph.node}
    se_output = names[block.nodes[-1]].output[0]
    probe.graph.output.extend(
        [helper.make_empty_tensor_value_info(block.after), helper.make_empty_tensor_value_info(se_output)]
    )
    session = make_session(probe.SerializeToString())
    feeds = random_inputs(session, batch=2, seed=0)
    x, y = session.run([block.after, se_output], feeds)
    z = x.mean(axis=(2, 3))
    hidden = np.maximum(z @ weights["fc1_weight"].T + weights["fc1_bias"], 0)
    gate = 1 / (1 + np.exp(-(hidden @ weights["fc2_weight"].T + weights["fc2_bias"])))
    np.testing.assert_allclose(y, x * gate[:, :, None, None], rtol=1e-5, atol=1e-6)
    assert not verify(before, after).passed  # random init changes the model's outputs


def report_first_conv(proto: onnx.ModelProto) -> str:
    return next(node.name for node in proto.graph.node if node.op_type == "Conv")


def test_residual_placement_goes_on_the_branch_before_the_add(tmp_path):
    original = build_samples.resnet_like(opset=13)
    model, report = insert_se(_ir(original), InsertOptions(where="residual"))
    residual_adds = [n for n in original.graph.node if n.op_type == "Add"]
    assert report.placement == "residual"
    assert len(report.blocks) == len(residual_adds)
    for block in report.blocks:
        scale = next(n for n in model.graph if n.name == block.nodes[-1])
        consumers = [use.node.op_type for use in scale.outputs[0].uses()]
        assert consumers == ["Add"]
    # The projection shortcut of the downsampling block keeps no SE of its own.
    shortcut_convs = {n.name for n in original.graph.node if n.op_type == "Conv" and _is_1x1(original, n)}
    assert not shortcut_convs & {block.name for block in report.blocks}
    before = _save(original, tmp_path / "a.onnx")
    assert verify(before, _save(model, tmp_path / "b.onnx")).passed


def _is_1x1(proto: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    weight = next(i for i in proto.graph.initializer if i.name == node.input[1])
    return list(weight.dims[2:]) == [1, 1]


def test_auto_placement_falls_back_to_conv_without_residual_blocks():
    _, report = insert_se(_ir(build_samples.vgg_like(opset=13)))
    assert report.placement == "conv"
    _, report = insert_se(_ir(build_samples.resnet_like(opset=13)))
    assert report.placement == "residual"


def test_conv_placement_goes_past_batchnorm_and_activation():
    original = _ir(build_samples.resnet_like(opset=13))
    producers = {output.name: node for node in original.graph for output in node.outputs}
    _, report = insert_se(original, InsertOptions(where="conv"))
    for block in report.blocks:
        producer = producers[block.after]
        assert producer.op_type in ("Relu", "BatchNormalization"), block
        if producer.op_type == "BatchNormalization":  # a branch's last conv: BN feeds the Add
            assert [use.node.op_type for use in producer.outputs[0].uses()] == ["Add"]


def test_inserted_blocks_are_found_by_inspect_detector():
    model, report = insert_se(_ir(build_samples.resnet_like(opset=18)), InsertOptions(where="conv"))
    blocks = find_se(model)
    assert len(blocks) == len(report.blocks)
    assert sorted(b.channels for b in blocks) == sorted(b.channels for b in report.blocks)


@pytest.mark.parametrize(
    ("channels", "ratio", "min_squeeze", "divisor", "expected"),
    [
        (256, 0.25, 1, None, 64),
        (256, 1 / 16, 1, None, 16),
        (16, 1 / 16, 4, None, 4),
        (100, 0.25, 1, 8, 24),
        (24, 0.25, 1, 8, 8),
        (3, 0.25, 1, None, 1),
    ],
)
def test_squeeze_width_rule(channels, ratio, min_squeeze, divisor, expected):
    assert squeeze_width(channels, ratio, min_squeeze, divisor) == expected


def test_ratio_and_divisor_set_the_widths():
    _, report = insert_se(_ir(build_samples.vgg_like(opset=13)), InsertOptions(where="conv", ratio=0.5, divisor=4))
    for block in report.blocks:
        assert block.squeeze_channels == squeeze_width(block.channels, 0.5, 1, 4)


def test_nodes_select_by_exact_name_and_by_regex():
    proto = build_samples.vgg_like(opset=13)
    conv_names = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    _, report = insert_se(_ir(proto), InsertOptions(nodes=(conv_names[1],)))
    assert [b.name for b in report.blocks] == [conv_names[1]]
    _, report = insert_se(_ir(proto), InsertOptions(nodes=(".*",)))
    assert [b.name for b in report.blocks] == conv_names
    _, report = insert_se(_ir(proto), InsertOptions(nodes=("no-such-conv",)))
    assert report.blocks == [] and "not selected by --nodes" in report.nothing_to_do


def test_min_channels_and_skip_depthwise():
    proto = build_samples.depthwise_separable(opset=13)
    convs = [ir_node for ir_node in _ir(proto).graph if ir_node.op_type == "Conv"]
    depthwise = {n.name for n in convs if n.attributes.get_int("group", 1) > 1}
    assert depthwise
    _, report = insert_se(_ir(proto), InsertOptions(where="conv", skip_depthwise=True))
    assert not depthwise & {b.name for b in report.blocks}
    assert {s.conv for s in report.skipped} >= depthwise
    widest = max(b.channels for b in report.blocks)
    _, report = insert_se(_ir(proto), InsertOptions(where="conv", min_channels=widest))
    assert all(b.channels >= widest for b in report.blocks)


def test_input_model_is_not_modified():
    model = _ir(build_samples.resnet_like(opset=13))
    count = len(model.graph)
    insert_se(model)
    assert len(model.graph) == count


def test_fixed_batch_models(tmp_path):
    original = build_samples.resnet_like(opset=13, batch=3)
    model, _ = insert_se(_ir(original))
    assert model.graph.inputs[0].shape[0] == 3
    assert verify(_save(original, tmp_path / "a.onnx"), _save(model, tmp_path / "b.onnx"), batch=3).passed


def test_identity_gates_are_exactly_one():
    for dtype in (np.float32, np.float16):
        assert (1 / (1 + np.exp(-np.array(SATURATED_GATE_BIAS, dtype)))).astype(dtype) == 1
        trainable = (1 / (1 + np.exp(-np.array(TRAINABLE_GATE_BIAS, dtype)))).astype(dtype)
        assert trainable * np.array(TRAINABLE_GATE_GAIN, dtype) == 1


def test_external_data_model_is_written_with_external_data(tmp_path):
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    build_samples.save_with_external_data(build_samples.resnet_like(opset=13), source)
    output = tmp_path / "out" / "model_se.onnx"
    model, _ = insert_se(load_model(source))
    save_model(model, output)
    assert (output.parent / "model_se.onnx.data").is_file()
    saved = onnx.load(output, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in saved.graph.initializer)
    assert verify(source, output).passed


def test_new_names_never_collide_with_existing_ones(tmp_path):
    proto = build_samples.vgg_like(opset=13)
    conv = report_first_conv(proto)
    # Squat on the names the pass would pick for the first block.
    squatters = [f"{conv}/se/{stem}" for stem in ("squeeze", "fc1", "fc1_output", "fc1_weight", "scale_output")]
    last = proto.graph.output[0].name
    for name in squatters:
        proto.graph.node.append(helper.make_node("Identity", [last], [name], name=name))
        last = name
    proto.graph.output[0].name = last
    model, report = insert_se(_ir(proto), InsertOptions(where="conv"))
    new_names = [n for b in report.blocks for n in b.nodes]
    assert len(set(new_names)) == len(new_names)
    assert not set(new_names) & set(squatters)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def _single_conv_model(opset: int = 13, *, op_type: str = "Conv") -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node(op_type, ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "single",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_conv_feeding_a_graph_output_keeps_the_output_name(tmp_path):
    original = _single_conv_model()
    model, report = insert_se(_ir(original), InsertOptions(where="conv"))
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0].producer().op_type == "Mul"
    assert verify(_save(original, tmp_path / "a.onnx"), _save(model, tmp_path / "b.onnx")).passed


def test_convs_inside_subgraphs_get_blocks_named_by_their_graph():
    inner_weight = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "inner_w")
    branch = helper.make_graph(
        [helper.make_node("Conv", ["y", "inner_w"], ["z"], name="inner_conv")],
        "branch",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [inner_weight],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["z2"], name="pass")],
        "other",
        [],
        [helper.make_tensor_value_info("z2", TensorProto.FLOAT, ["N", 3, 4, 4])],
    )
    outer_weight = numpy_helper.from_array(np.ones((3, 3, 3, 3), np.float32), "outer_w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "outer_w"], ["y"], name="outer_conv", pads=[1, 1, 1, 1]),
            helper.make_node("If", ["flag"], ["out"], name="if", then_branch=branch, else_branch=other),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [outer_weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model, report = insert_se(_ir(proto), InsertOptions(where="conv"))
    assert [(b.name, b.graph) for b in report.blocks] == [
        ("outer_conv", "main"),
        ("if.then_branch/inner_conv", "main/if.then_branch"),
    ]
    assert report.skipped == []
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": 0}, "ratio must be"),
        ({"ratio": 1.5}, "ratio must be"),
        ({"where": "everywhere"}, "where must be"),
        ({"init": "zeros"}, "init must be"),
        ({"nodes": ("(",)}, "regular expression"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    # The options check themselves when made, and name the option as the library spells it.
    with pytest.raises(SeOnnxError, match=message):
        InsertOptions(**options)


def test_a_placement_nothing_matches_leaves_the_model_and_says_why():
    model, report = insert_se(_ir(build_samples.vgg_like(opset=13)), InsertOptions(where="residual"))
    assert report.blocks == [] and "no residual block" in report.nothing_to_do
    assert find_se(model) == []


def test_unsupported_models_are_clear_errors():
    no_conv = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    with pytest.raises(SeOnnxError, match="no Conv node"):
        insert_se(_ir(no_conv))
    with pytest.raises(SeOnnxError, match="quantized"):
        insert_se(_ir(_single_conv_model(op_type="ConvInteger")))
    with pytest.raises(SeOnnxError, match="opset 10 is older than 11"):
        insert_se(_ir(_single_conv_model(opset=10)))


def test_trained_weights_are_used_and_shape_checked():
    proto = _single_conv_model()
    weights = SEWeights.random(4, 2, np.random.default_rng(1))
    arrays = {f"conv.{key}": value for key, value in weights.arrays().items()}
    model, report = insert_se(_ir(proto), InsertOptions(where="conv", weights=arrays))
    assert report.blocks[0].squeeze_channels == 2
    stored = model.graph.initializers["conv/se/fc2_weight"].const_value.numpy()
    np.testing.assert_array_equal(stored, weights.fc2_weight)
    conv_layout = dict(arrays, **{"conv.fc1.weight": weights.fc1_weight[:, :, None, None]})
    insert_se(_ir(proto), InsertOptions(where="conv", weights=conv_layout))
    with pytest.raises(SeOnnxError, match=r"fc2.weight has shape \(3, 2\), expected \(4, 2\)"):
        insert_se(
            _ir(proto), InsertOptions(where="conv", weights=dict(arrays, **{"conv.fc2.weight": np.zeros((3, 2))}))
        )
    with pytest.raises(SeOnnxError, match="no weights for block 'conv'"):
        insert_se(_ir(proto), InsertOptions(where="conv", weights={"other.fc1.weight": np.zeros((2, 4))}))
