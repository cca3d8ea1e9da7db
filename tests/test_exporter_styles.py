"""Every pass on models written as other exporters write them (`tests.exporter_styles`):
Paddle2ONNX's Constant-node weights and bias Adds, and networks inside If and Loop bodies.

Each rewritten model passes the full checker and runs in ONNX Runtime, its outputs compared
with the original's, for both values of an If's condition.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from models import build_samples
from se_onnx import InsertOptions, find_se, fuse_se, insert_se, strip_se, unfuse_se
from se_onnx.passes.export_weights import export_se_weights
from se_onnx.passes.find import detect
from se_onnx.passes.inspect import inspect_model
from tests import exporter_styles as styles
from tests.se_variants import Variant, ort_outputs, se_model

FLAGS = (True, False)


def _checked(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _outputs(model: onnx.ModelProto | ir.Model, flag: bool) -> list[np.ndarray]:
    proto = _checked(model) if isinstance(model, ir.Model) else model
    return ort_outputs(proto, styles.feeds(proto, flag=flag))


def _assert_same_outputs(original: onnx.ModelProto, rewritten: ir.Model | onnx.ModelProto, *, rtol: float = 1e-5):
    for flag in FLAGS:
        for expected, actual in zip(_outputs(original, flag), _outputs(rewritten, flag), strict=True):
            atol = 1e-2 if expected.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), rtol=rtol, atol=atol)


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_nodes(subgraph)


def _without_rescales(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each SE rescale Mul passing its feature map through: what stripping computes."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    rescales = {
        block.rescale.name for block in find_se(ir.from_proto(onnx.ModelProto.FromString(proto.SerializeToString())))
    }
    assert rescales
    for node in _all_nodes(proto.graph):
        if node.name in rescales:
            node.op_type = "Identity"
            del node.input[1:]
    return proto


def _user_constants(proto: onnx.ModelProto) -> dict[str, bytes]:
    """The Constant nodes outside the SE blocks, serialized, by name."""
    return {
        node.name: node.SerializeToString()
        for node in _all_nodes(proto.graph)
        if node.op_type == "Constant" and "se/" not in node.name
    }


PADDLE_CASES = [
    pytest.param(dict(opset=opset, dtype=dtype), id=f"opset{opset}-{dtype}")
    for opset, dtype in ((11, "float32"), (13, "float32"), (18, "float32"), (21, "float32"), (13, "float16"))
]
SUBGRAPH_CASES = [
    pytest.param(build, constants, id=f"{build.__name__}-{'constants' if constants else 'initializers'}")
    for build in (styles.if_model, styles.loop_model, styles.scan_model)
    for constants in (False, True)
]
# The graph of each subgraph model's SE block, and the graphs `insert --where conv` adds blocks to.
BLOCK_GRAPH = {
    styles.if_model: "main/pick.then_branch",
    styles.loop_model: "main/repeat.body",
    styles.scan_model: "main/steps.body",
}
INSERT_GRAPHS = {
    styles.if_model: {"main", "main/pick.then_branch", "main/pick.else_branch"},
    styles.loop_model: {"main", "main/repeat.body/inner_pick.then_branch"},  # two levels down
    styles.scan_model: {"main/steps.body"},
}


# --- Paddle2ONNX: Constant-node weights, biases as Reshape(Constant) in a separate Add ------------


@pytest.mark.parametrize("case", PADDLE_CASES)
def test_paddle_blocks_are_found_with_their_bias_adds(case):
    proto = styles.paddle_model(**case)
    detection = detect(ir.from_proto(proto))
    assert len(detection.blocks) == 2 and detection.near_misses == []
    for index, block in enumerate(detection.blocks):
        assert {node.name for node in block.nodes} == {
            node.name
            for node in proto.graph.node
            if node.name.startswith(f"block{index}/se/")
            and node.op_type != "Constant"
            and not node.name.endswith("_reshape")
        }
        assert (block.gate.op_type, block.gate.alpha, block.gate.beta) == (
            "HardSigmoid",
            pytest.approx(0.2),
            pytest.approx(0.5),
        )
        assert (block.channels, block.squeeze_channels, block.graph) == (
            styles.CHANNELS,
            styles.SQUEEZE_CHANNELS,
            "main",
        )


def test_paddle_inspect_lists_convs_with_shapes_and_blocks():
    summary = inspect_model(ir.from_proto(styles.paddle_model(se=False)))
    assert [(conv.name, conv.out_channels, conv.kernel) for conv in summary.convs] == [
        ("conv0", 8, [3, 3]),
        ("conv1", 8, [3, 3]),
        ("head", 8, [1, 1]),
    ]
    assert summary.insertion_sites["conv"] == ["conv0", "conv1", "head"]
    assert len(inspect_model(ir.from_proto(styles.paddle_model())).se_blocks) == 2


@pytest.mark.parametrize("case", PADDLE_CASES)
def test_paddle_insert_puts_blocks_after_each_bias_add_and_activation(case):
    proto = styles.paddle_model(se=False, **case)
    constants = _user_constants(proto)  # before onnx-ir wraps (and could change) the proto's tensors
    model, report = insert_se(ir.from_proto(proto), InsertOptions(where="conv"))
    assert [(block.name, block.after) for block in report.blocks] == [
        ("conv0", "relu0_out"),
        ("conv1", "relu1_out"),
        ("head", "head_bias_out"),
    ]
    _assert_same_outputs(proto, model)
    assert _user_constants(_checked(model)) == _user_constants(proto) == constants
    assert len(find_se(model)) == 3


@pytest.mark.parametrize("opset", [11, 18])
def test_paddle_residual_block_gets_its_block_before_the_residual_add(opset):
    proto = styles.paddle_resnet_model(opset=opset)
    model, report = insert_se(ir.from_proto(proto))
    assert report.placement == "residual"
    assert [(block.name, block.after) for block in report.blocks] == [("branch_b", "branch_b_bias_out")]
    _assert_same_outputs(proto, model)


@pytest.mark.parametrize("case", PADDLE_CASES)
def test_paddle_strip_removes_the_blocks_and_their_constants_only(case):
    proto = styles.paddle_model(**case)
    constants = _user_constants(proto)
    model, report = strip_se(ir.from_proto(proto))
    assert len(report.blocks) == 2 and find_se(model) == []
    _assert_same_outputs(_without_rescales(proto), model)
    stripped = _checked(model)
    assert _user_constants(stripped) == _user_constants(proto) == constants
    assert not any(node.name.startswith("block") for node in stripped.graph.node)


@pytest.mark.parametrize("form", ["canonical", "function"])
@pytest.mark.parametrize("case", PADDLE_CASES)
def test_paddle_fuse_and_unfuse_keep_outputs_and_the_users_constants(case, form):
    proto = styles.paddle_model(**case)
    constants = _user_constants(proto)
    fused, report = fuse_se(ir.from_proto(proto), form)
    assert report.written == form and len(report.blocks) == 2
    _assert_same_outputs(proto, fused)
    assert _user_constants(_checked(fused)) == _user_constants(proto) == constants
    blocks = find_se(unfuse_se(fused)[0] if form == "function" else fused)
    assert [(b.gate.op_type, b.gate.alpha) for b in blocks] == [("HardSigmoid", pytest.approx(0.2))] * 2
    if form == "function":
        _assert_same_outputs(proto, unfuse_se(fused)[0])


def test_paddle_export_weights_reads_the_constants_and_round_trips_through_insert():
    proto = styles.paddle_model()
    arrays = export_se_weights(ir.from_proto(proto))
    assert sorted(arrays) == sorted(
        f"conv{i}.{key}" for i in range(2) for key in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    )
    (block,) = [b for b in find_se(ir.from_proto(proto)) if b.input.name == "relu0_out"]
    np.testing.assert_array_equal(arrays["conv0.fc1.weight"], block.weights().fc1_weight)
    assert arrays["conv0.fc2.weight"].shape == (styles.CHANNELS, styles.SQUEEZE_CHANNELS)

    stripped, _ = strip_se(ir.from_proto(proto))
    model, report = insert_se(stripped, InsertOptions(where="conv", nodes=("conv0", "conv1"), weights=arrays))
    assert [block.name for block in report.blocks] == ["conv0", "conv1"]
    _checked(model)
    again = export_se_weights(model)
    assert sorted(again) == sorted(arrays)
    for key, array in arrays.items():
        np.testing.assert_allclose(again[key], array, rtol=1e-6)


# --- If / Loop bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "constants"), SUBGRAPH_CASES)
def test_blocks_in_subgraphs_are_found_and_report_their_graph(build, constants):
    blocks = find_se(ir.from_proto(build(constants=constants)))
    assert [block.graph for block in blocks] == [BLOCK_GRAPH[build]]
    assert blocks[0].to_dict()["graph"] == BLOCK_GRAPH[build]


@pytest.mark.parametrize(("build", "constants"), SUBGRAPH_CASES)
def test_identity_insert_in_subgraphs_keeps_outputs_on_both_branches(build, constants):
    proto = build(constants=constants)
    model, report = insert_se(ir.from_proto(proto), InsertOptions(where="conv"))
    assert {block.graph for block in report.blocks} == INSERT_GRAPHS[build]
    if build is styles.if_model:
        assert {"pick.else_branch/conv", "pick.then_branch/then_head"} <= {block.name for block in report.blocks}
    _assert_same_outputs(proto, model)
    inserted = _checked(model)
    original_nodes = {node.name for node in _all_nodes(proto.graph)}
    new_nodes = [node.name for node in _all_nodes(inserted.graph) if node.name not in original_nodes]
    assert len(new_nodes) == len(set(new_nodes)) == sum(len(block.nodes) for block in report.blocks)
    values = [output for node in _all_nodes(inserted.graph) for output in node.output]
    assert len(values) == len(set(values))  # unique across every scope, as in the original
    assert len(find_se(model)) == len(find_se(ir.from_proto(proto))) + len(report.blocks)


def test_insert_reaches_a_conv_that_reads_captured_outer_values():
    """The then branch's first conv reads the outer feature map and an outer weight."""
    proto = styles.if_model()
    stripped, _ = strip_se(ir.from_proto(proto))
    model, report = insert_se(stripped, InsertOptions(where="conv", nodes=("pick.then_branch/conv",)))
    (block,) = report.blocks
    assert (block.name, block.graph, block.after) == ("pick.then_branch/conv", "main/pick.then_branch", "relu_out")
    _assert_same_outputs(_without_rescales(proto), model)


@pytest.mark.parametrize(("build", "constants"), SUBGRAPH_CASES)
def test_strip_in_subgraphs_bypasses_the_block(build, constants):
    proto = build(constants=constants)
    model, report = strip_se(ir.from_proto(proto))
    assert len(report.blocks) == 1 and report.nodes_removed >= 8
    assert find_se(model) == []
    _assert_same_outputs(_without_rescales(proto), model)


@pytest.mark.parametrize("form", ["canonical", "function"])
@pytest.mark.parametrize(("build", "constants"), SUBGRAPH_CASES)
def test_fuse_in_subgraphs_keeps_outputs(build, constants, form):
    proto = build(constants=constants)
    fused, report = fuse_se(ir.from_proto(proto), form)
    assert [block["graph"] for block in report.blocks] == [find_se(ir.from_proto(proto))[0].graph]
    _assert_same_outputs(proto, fused)
    if form == "function":
        unfused, unfuse_report = unfuse_se(fused)
        assert unfuse_report.blocks_inlined == 1
        _assert_same_outputs(proto, unfused)
    else:
        assert [block.graph for block in find_se(fused)] == [report.blocks[0]["graph"]]


@pytest.mark.parametrize(("build", "constants"), SUBGRAPH_CASES)
def test_export_weights_keys_subgraph_blocks_by_their_graph_and_round_trips(build, constants):
    proto = build(constants=constants)
    arrays = export_se_weights(ir.from_proto(proto))
    (key,) = sorted({key.rsplit(".", 2)[0] for key in arrays})
    assert key.startswith(BLOCK_GRAPH[build].removeprefix("main/") + "/")
    stripped, _ = strip_se(ir.from_proto(proto))
    model, report = insert_se(stripped, InsertOptions(where="conv", nodes=(key,), weights=arrays))
    assert [(block.name, block.graph) for block in report.blocks] == [(key, BLOCK_GRAPH[build])]
    _checked(model)
    again = export_se_weights(model)
    assert sorted(again) == sorted(arrays)
    for name, array in arrays.items():
        np.testing.assert_allclose(again[name], array, rtol=1e-6)


@pytest.mark.parametrize(("build", "constants"), SUBGRAPH_CASES)
def test_inspect_lists_subgraph_convs_and_blocks_with_their_graphs(build, constants):
    proto = build(constants=constants)
    summary = inspect_model(ir.from_proto(proto))
    assert {conv.graph for conv in summary.convs} >= {BLOCK_GRAPH[build]}
    assert all(conv.out_channels is not None for conv in summary.convs)  # every weight shape known
    assert [block.graph for block in summary.se_blocks] == [BLOCK_GRAPH[build]]
    _, report = insert_se(ir.from_proto(proto), InsertOptions(where="conv"))
    assert summary.insertion_sites["conv"] == [block.name for block in report.blocks]


# --- A whole network in both branches of an If -----------------------------------------------------


@pytest.mark.parametrize("where", ["residual", "conv"])
def test_a_resnet_in_if_branches_gets_blocks_in_both(where):
    proto = styles.in_if_branches(build_samples.resnet_like())
    model, report = insert_se(ir.from_proto(proto), InsertOptions(where=where))
    assert {block.graph for block in report.blocks} == {"main/pick.then_branch", "main/pick.else_branch"}
    then = sorted(b.name.split("/", 1)[1] for b in report.blocks if b.graph.endswith("then_branch"))
    other = sorted(b.name.split("/", 1)[1] for b in report.blocks if b.graph.endswith("else_branch"))
    assert then == other and then  # the same convs on both sides, told apart by their graph
    _, plain = insert_se(ir.from_proto(build_samples.resnet_like()), InsertOptions(where=where))
    assert then == sorted(block.name for block in plain.blocks)  # as in the main graph
    _assert_same_outputs(proto, model)


def test_se_blocks_in_if_branches_are_found_fused_stripped_and_exported():
    proto = styles.in_if_branches(build_samples.mobilenet_se_like())
    blocks = find_se(ir.from_proto(proto))
    assert [block.graph for block in blocks] == ["main/pick.else_branch"] * 2 + ["main/pick.then_branch"] * 2
    for form in ("canonical", "function"):
        fused, _ = fuse_se(ir.from_proto(proto), form)
        _assert_same_outputs(proto, fused)
    stripped, report = strip_se(ir.from_proto(proto))
    assert len(report.blocks) == 4 and find_se(stripped) == []
    arrays = export_se_weights(ir.from_proto(proto))
    keys = sorted({key.rsplit(".", 2)[0] for key in arrays})
    assert len(keys) == 4 and all(key.startswith(("pick.then_branch/", "pick.else_branch/")) for key in keys)
    model, _ = insert_se(stripped, InsertOptions(where="conv", nodes=tuple(keys), weights=arrays))
    again = export_se_weights(model)
    assert sorted(again) == sorted(arrays)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_block_whose_output_is_the_branch_output(dtype):
    """Stripping reads the block's input through an Identity that keeps the branch output's name;
    fusing hands the name to the new block's output."""
    proto = styles.in_if_branches(se_model(Variant(se_is_output=True, dtype=dtype, opset=18)))
    stripped, _ = strip_se(ir.from_proto(proto))
    _assert_same_outputs(_without_rescales(proto), stripped)
    branch_outputs = {
        output.name
        for node in _checked(stripped).graph.node
        for attribute in node.attribute
        for output in attribute.g.output
    }
    assert branch_outputs == {"then/y", "else/y"}
    fused, _ = fuse_se(ir.from_proto(proto), "canonical")
    _assert_same_outputs(proto, fused, rtol=1e-3)
    model, report = insert_se(stripped, InsertOptions(where="conv"))
    assert report.blocks
    _assert_same_outputs(_checked(stripped), model)
