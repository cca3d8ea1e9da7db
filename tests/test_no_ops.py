"""No-ops around and inside SE blocks (the newest Paddle2ONNX's Identity after each Add and Mul, a
Dropout, a Cast to the same type): every pass sees through them, a rewrite removes those inside
the blocks it rewrites, and those outside stay."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from se_onnx import InsertOptions, find_se, fuse_se, insert_se, strip_se, unfuse_se
from se_onnx.ir.graph import is_no_op
from se_onnx.passes.export_weights import export_se_weights
from se_onnx.passes.find import detect
from se_onnx.passes.inspect import inspect_model
from tests import exporter_styles as styles
from tests.se_variants import ort_outputs

NO_OPS = ("Identity", "Dropout", "Cast")
# The no-ops inside a block: after its two bias Adds. The one after the rescale Mul is outside.
_INSIDE = re.compile(r"/se/fc\d_bias_")


def _checked(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _assert_same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    feeds = styles.feeds(original)
    for expected, actual in zip(ort_outputs(original, feeds), ort_outputs(rewritten, feeds), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _no_ops(proto: onnx.ModelProto, no_op: str) -> tuple[list[str], list[str]]:
    """The names of the model's `no_op` nodes (inside SE blocks, outside them)."""
    # The user's Cast of the output scale's Constant is the model's own, whatever the no-op.
    names = [node.name for node in proto.graph.node if node.op_type == no_op and node.name != "output_scale_cast"]
    return [n for n in names if _INSIDE.search(n)], [n for n in names if not _INSIDE.search(n)]


@pytest.mark.parametrize("no_op", NO_OPS)
def test_blocks_laced_with_no_ops_are_found_with_them(no_op):
    proto = styles.paddle_model(no_op=no_op)
    inside, outside = _no_ops(proto, no_op)
    assert len(inside) == 4 and len(outside) == 6  # trunk bias Adds, rescale Muls, the output scale
    detection = detect(ir.from_proto(proto))
    assert len(detection.blocks) == 2 and detection.near_misses == []
    for index, block in enumerate(detection.blocks):
        members = {node.name for node in block.nodes}
        assert {name for name in inside if name.startswith(f"block{index}/")} <= members
        assert not members & set(outside)
        assert (block.gate.op_type, block.channels, block.squeeze_channels) == ("HardSigmoid", 8, 4)
    summary = inspect_model(ir.from_proto(proto))
    assert len(summary.se_blocks) == 2 and summary.se_near_misses == []


@pytest.mark.parametrize("form", ["canonical", "conv", "function"])
@pytest.mark.parametrize("no_op", NO_OPS)
def test_fuse_and_unfuse_remove_the_no_ops_inside_the_blocks_only(no_op, form):
    proto = styles.paddle_model(no_op=no_op)
    outside = _no_ops(proto, no_op)[1]
    fused, report = fuse_se(ir.from_proto(proto), form)
    assert report.written == form and len(report.blocks) == 2
    fused_proto = _checked(fused)
    _assert_same_outputs(proto, fused_proto)
    assert _no_ops(fused_proto, no_op) == ([], outside)
    if form == "function":
        unfused = _checked(unfuse_se(fused)[0])
        _assert_same_outputs(proto, unfused)
        assert _no_ops(unfused, no_op) == ([], outside)


@pytest.mark.parametrize("no_op", NO_OPS)
def test_strip_removes_the_blocks_with_their_no_ops_and_keeps_the_rest(no_op):
    proto = styles.paddle_model(no_op=no_op)
    outside = _no_ops(proto, no_op)[1]
    stripped, report = strip_se(ir.from_proto(proto))
    assert len(report.blocks) == 2 and find_se(stripped) == []
    stripped_proto = _checked(stripped)
    assert _no_ops(stripped_proto, no_op) == ([], outside)
    assert not any("/se/" in node.name and node.op_type != no_op for node in stripped_proto.graph.node)
    # What stripping computes: each rescale passing its feature map through.
    expected = onnx.ModelProto.FromString(proto.SerializeToString())
    for node in expected.graph.node:
        if node.name.endswith("/se/scale"):
            node.op_type = "Identity"
            del node.input[1:]
    _assert_same_outputs(expected, stripped_proto)


def test_export_weights_keys_blocks_by_the_conv_behind_the_no_ops_and_round_trips():
    proto = styles.paddle_model(no_op="Identity")
    arrays = export_se_weights(ir.from_proto(proto))
    assert sorted({key.split(".")[0] for key in arrays}) == ["conv0", "conv1"]
    stripped, _ = strip_se(ir.from_proto(proto))
    model, report = insert_se(stripped, InsertOptions(where="conv", nodes=("conv0", "conv1"), weights=arrays))
    # Each conv's layer reaches past the Identity its stripped block's rescale left.
    assert [block.after for block in report.blocks] == [f"block{i}/se/scale_identity_out" for i in range(2)]
    _checked(model)
    # The blocks inserted (with a sigmoid gate) give the same weights back, under the same keys.
    again = export_se_weights(model)
    assert sorted(again) == sorted(arrays)
    for key, array in arrays.items():
        np.testing.assert_allclose(again[key], array, rtol=1e-6)


@pytest.mark.parametrize("no_op", NO_OPS)
def test_insert_walks_past_no_ops_and_leaves_them(no_op):
    proto = styles.paddle_model(no_op=no_op, se=False)
    outside = _no_ops(proto, no_op)[1]
    model, report = insert_se(ir.from_proto(proto), InsertOptions(where="conv"))
    suffix = no_op.lower()
    assert [(block.name, block.after, block.through) for block in report.blocks] == [
        ("conv0", "relu0_out", ("Add", "Relu")),
        ("conv1", "relu1_out", ("Add", "Relu")),
        ("head", f"head_bias_{suffix}_out", ("Add",)),  # the output scale is no per-channel constant
    ]
    inserted = _checked(model)
    _assert_same_outputs(proto, inserted)
    assert _no_ops(inserted, no_op) == ([], outside)
    assert len(find_se(model)) == 3
    assert not insert_se(model, InsertOptions(where="conv"))[1].blocks  # each conv has its block


def test_a_residual_add_behind_an_identity_gets_its_block():
    proto = styles.paddle_resnet_model(no_op="Identity")
    model, report = insert_se(ir.from_proto(proto))
    assert report.placement == "residual"
    assert [(block.name, block.after) for block in report.blocks] == [("branch_b", "branch_b_bias_identity_out")]
    _assert_same_outputs(proto, _checked(model))
    assert [node.name for node in model.graph if node.op_type == "Identity"] == [
        node.name for node in proto.graph.node if node.op_type == "Identity"
    ]


def _node(op_type: str, inputs: list[ir.Value | None], *, outputs: int = 1, **attributes) -> ir.Node:
    return ir.node(op_type, inputs, attributes or None, num_outputs=outputs)


def _typed(shape: list[int | str], dtype: ir.DataType = ir.DataType.FLOAT) -> ir.Value:
    return ir.Value(name="x", type=ir.TensorType(dtype), shape=ir.Shape(shape))


def _constant(array) -> ir.Value:
    return ir.Value(name="c", const_value=ir.tensor(np.asarray(array)))


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (_node("Identity", [_typed([1, 8])]), True),
        (_node("Dropout", [_typed([1, 8])]), True),
        (_node("Dropout", [_typed([1, 8]), None, _constant(False)]), True),
        (_node("Dropout", [_typed([1, 8]), None, _constant(True)]), False),  # training mode
        (_node("Cast", [_typed([1, 8])], to=int(ir.DataType.FLOAT)), True),
        (_node("Cast", [_typed([1, 8])], to=int(ir.DataType.FLOAT16)), False),
        (_node("Cast", [ir.Value(name="untyped")], to=int(ir.DataType.FLOAT)), False),
        (_node("Reshape", [_typed(["N", 8, 6, 6]), _constant(np.array([0, 8, -1, 6], np.int64))]), True),
        (_node("Reshape", [_typed([2, 8, 6, 6]), _constant(np.array([2, 8, 6, 6], np.int64))]), True),
        (_node("Reshape", [_typed([2, 8, 6, 6]), _constant(np.array([2, 8, 36], np.int64))]), False),
        (_node("Reshape", [_typed(["N", 8, 6, 6]), _constant(np.array([-1, 8, -1, 6], np.int64))]), False),
        (_node("Reshape", [ir.Value(name="unshaped"), _constant(np.array([0, 0], np.int64))]), False),
        (_node("Relu", [_typed([1, 8])]), False),
    ],
    ids=[
        "identity",
        "dropout",
        "dropout-inference",
        "dropout-training",
        "cast-same",
        "cast-other",
        "cast-unknown",
        "reshape-copy-and-infer",
        "reshape-same",
        "reshape-other",
        "reshape-two-inferred",
        "reshape-unknown",
        "relu",
    ],
)
def test_what_is_a_no_op(node, expected):
    assert is_no_op(node) is expected


def test_a_dropout_whose_mask_is_read_is_no_no_op():
    dropout = _node("Dropout", [_typed([1, 8])], outputs=2)
    assert is_no_op(dropout)
    _node("Not", [dropout.outputs[1]])
    assert not is_no_op(dropout)
