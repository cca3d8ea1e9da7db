"""Tests of `se_onnx.ir.constants`: constants from initializers, Constant nodes in every attribute
form, and the shape and type ops exporters wrap around them; computed values are not constants."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from se_onnx.ir.constants import (
    constant_array,
    constant_source,
    is_constant,
    set_constant,
    static_shape,
    value_dtype,
)

WEIGHT = np.arange(6, dtype=np.float32).reshape(2, 3)


def _constant(output: str, **form) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], name=f"{output}_node", **form)


def _value(nodes: list[onnx.NodeProto], name: str, *, opset: int = 13, initializers=()) -> ir.Value:
    """The value `name` in a graph of `nodes` whose output it is."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None)],
        list(initializers),
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    return model.graph.outputs[0]


WEIGHT_NODE = _constant("w", value=numpy_helper.from_array(WEIGHT))
CASES = {
    "value": ([WEIGHT_NODE], WEIGHT),
    "value_float": ([_constant("w", value_float=2.5)], np.array(2.5, np.float32)),
    "value_floats": ([_constant("w", value_floats=[1.0, 2.0])], np.array([1.0, 2.0], np.float32)),
    "value_int": ([_constant("w", value_int=7)], np.array(7, np.int64)),
    "value_ints": ([_constant("w", value_ints=[1, 8, 1, 1])], np.array([1, 8, 1, 1], np.int64)),
    "identity": ([WEIGHT_NODE, helper.make_node("Identity", ["w"], ["y"])], WEIGHT),
    "reshape_with_zero_dim": (
        [WEIGHT_NODE, _constant("shape", value_ints=[0, 3, 1]), helper.make_node("Reshape", ["w", "shape"], ["y"])],
        WEIGHT.reshape(2, 3, 1),
    ),
    "unsqueeze_axes_input": (
        [WEIGHT_NODE, _constant("axes", value_ints=[0, -1]), helper.make_node("Unsqueeze", ["w", "axes"], ["y"])],
        WEIGHT.reshape(1, 2, 3, 1),
    ),
    "squeeze_every_unit_dim": (
        [
            _constant("w", value=numpy_helper.from_array(WEIGHT.reshape(1, 2, 1, 3))),
            helper.make_node("Squeeze", ["w"], ["y"]),
        ],
        WEIGHT,
    ),
    "cast": ([WEIGHT_NODE, helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT16)], WEIGHT.astype(np.float16)),
    "flatten": ([WEIGHT_NODE, helper.make_node("Flatten", ["w"], ["y"], axis=0)], WEIGHT.reshape(1, 6)),
    "chain": (
        [
            WEIGHT_NODE,
            helper.make_node("Identity", ["w"], ["a"]),
            _constant("shape", value_ints=[-1]),
            helper.make_node("Reshape", ["a", "shape"], ["b"]),
            helper.make_node("Cast", ["b"], ["y"], to=TensorProto.DOUBLE),
        ],
        WEIGHT.reshape(-1).astype(np.float64),
    ),
}


@pytest.mark.parametrize("form", sorted(CASES))
def test_constants_in_every_form(form):
    nodes, expected = CASES[form]
    value = _value(nodes, nodes[-1].output[0])
    array = constant_array(value)
    assert array is not None and array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)
    assert is_constant(value) and static_shape(value) == expected.shape
    assert value_dtype(value) == ir.DataType.from_numpy(expected.dtype)


def test_unsqueeze_axes_as_attribute_before_opset_13():
    value = _value([WEIGHT_NODE, helper.make_node("Unsqueeze", ["w"], ["y"], axes=[1])], "y", opset=11)
    np.testing.assert_array_equal(constant_array(value), WEIGHT.reshape(2, 1, 3))


def test_initializer():
    value = _value(
        [helper.make_node("Identity", ["w"], ["y"])], "y", initializers=[numpy_helper.from_array(WEIGHT, "w")]
    )
    np.testing.assert_array_equal(constant_array(value), WEIGHT)


@pytest.mark.parametrize(
    "nodes",
    [
        [helper.make_node("Identity", ["x"], ["y"])],  # a graph input
        [WEIGHT_NODE, helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["w", "s"], ["y"])],
        [WEIGHT_NODE, helper.make_node("Add", ["w", "w"], ["y"])],  # computed, even from constants
        [
            WEIGHT_NODE,
            _constant("shape", value_ints=[5]),
            helper.make_node("Reshape", ["w", "shape"], ["y"]),
        ],  # malformed
    ],
    ids=["graph_input", "runtime_shape", "add", "bad_reshape"],
)
def test_computed_values_are_not_constants(nodes):
    value = _value(nodes, "y")
    assert constant_array(value) is None and not is_constant(value) and static_shape(value) is None


@pytest.mark.parametrize("form", ["value", "value_float", "value_floats", "value_int", "value_ints"])
def test_set_constant_writes_a_constant_node_in_its_own_form(form):
    nodes, expected = CASES[form]
    value = _value(nodes, "w")
    source = constant_source(value)
    assert source is value
    set_constant(source, expected + 1)
    node = value.producer()
    assert list(node.attributes) == [form] and node.name == "w_node"
    written = constant_array(value)
    assert written.dtype == expected.dtype and written.shape == expected.shape
    np.testing.assert_array_equal(written, expected + 1)


def test_constant_source_follows_shape_ops_to_the_constant_they_reshape():
    nodes = [
        WEIGHT_NODE,
        _constant("shape", value_ints=[3, 2]),
        helper.make_node("Reshape", ["w", "shape"], ["reshaped"]),
        helper.make_node("Identity", ["reshaped"], ["bias"]),
    ]
    value = _value(nodes, "bias")
    source = constant_source(value)
    assert source is not None and source.name == "w"
    set_constant(source, WEIGHT * 2)
    np.testing.assert_array_equal(constant_array(value), (WEIGHT * 2).reshape(3, 2))
    cast = _value([WEIGHT_NODE, helper.make_node("Cast", ["w"], ["c"], to=TensorProto.FLOAT16)], "c")
    assert constant_source(cast) is None  # a Cast changes the elements: not a trainable source
    initializer = _value(
        [helper.make_node("Identity", ["init"], ["i"])], "i", initializers=[numpy_helper.from_array(WEIGHT, "init")]
    )
    source = constant_source(initializer)
    assert source.name == "init" and source.is_initializer()
    set_constant(source, WEIGHT + 1)
    np.testing.assert_array_equal(constant_array(initializer), WEIGHT + 1)
