"""Whether a value is a constant and what it is, wherever an exporter put it.

A weight may be an initializer, the output of a `Constant` node (any attribute form: ``value``,
``value_float(s)``, ``value_int(s)``, …), or a constant passed through the shape and type ops that
exporters wrap around one (Identity, Reshape, Unsqueeze, Squeeze, Cast, Flatten; Paddle2ONNX writes
each conv bias as ``Reshape(Constant)``), or a DequantizeLinear of integer constants (the weights of
ONNX Runtime's QDQ format). These functions compute the value without changing the model: the
Constant nodes stay where the user put them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeGuard

import numpy as np
import onnx_ir as ir

# The ops whose output is a constant when their data input is: they only move or retype elements.
_LOOK_THROUGH = frozenset({"Identity", "Reshape", "Unsqueeze", "Squeeze", "Cast", "Flatten"})
# The inputs that hold a layer's weights and biases, by op type: the model's parameters, which
# `se-onnx train --train all` trains and `insert` and `evaluate` count. Every other constant is fixed
# and no parameter: BatchNorm statistics, an SE gate's gain, axes and shapes.
WEIGHT_INPUTS: Mapping[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2),
    "PRelu": (1,),
}
# QuantizeLinear/DequantizeLinear come in the default domain, or in ONNX Runtime's for 16-bit types.
_QUANTIZE_DOMAINS = ("", "ai.onnx", "com.microsoft")


def is_quantize_op(node: ir.Node | None, op_type: str) -> TypeGuard[ir.Node]:
    """Whether `node` is a QuantizeLinear or DequantizeLinear (`op_type`) in either domain."""
    return node is not None and node.op_type == op_type and node.domain in _QUANTIZE_DOMAINS


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The value's constant tensor, or None when it is computed at run time (or unknown)."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if is_quantize_op(producer, "DequantizeLinear"):
        array = _dequantized(producer)
        return None if array is None else ir.Tensor(array, name=value.name)
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return None
    if producer.op_type == "Constant":
        attribute = producer.attributes.get("value")
        if attribute is not None and not attribute.is_ref() and len(producer.attributes) == 1:
            # Read as is: onnx-ir's helper would rename the node's tensor after the value.
            return attribute.as_tensor()
        try:
            return ir.convenience.get_const_tensor(value)
        except ValueError:  # a malformed Constant or a sparse one
            return None
    if producer.op_type not in _LOOK_THROUGH or not producer.inputs or producer.inputs[0] is None:
        return None
    source = constant_tensor(producer.inputs[0])
    if source is None:
        return None
    if producer.op_type == "Identity":
        return source
    array = _apply(producer, source.numpy())
    return None if array is None else ir.Tensor(array, name=value.name)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant as a numpy array, or None (see `constant_tensor`)."""
    tensor = constant_tensor(value)
    return None if tensor is None else tensor.numpy()


def is_constant(value: ir.Value | None) -> bool:
    return constant_tensor(value) is not None


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape when every dim is known: from shape inference, else from its constant."""
    if value is None:
        return None
    if value.shape is not None and value.shape.is_static():
        return value.shape.numpy()
    tensor = constant_tensor(value)
    return None if tensor is None else tuple(tensor.shape.numpy())


def value_dtype(value: ir.Value | None) -> ir.DataType | None:
    """The value's element type: from its type, else from its constant."""
    if value is None:
        return None
    if value.dtype not in (None, ir.DataType.UNDEFINED):
        return value.dtype
    tensor = constant_tensor(value)
    return None if tensor is None else tensor.dtype


def _apply(node: ir.Node, data: np.ndarray) -> np.ndarray | None:
    """`node` (one of the look-through ops) applied to constant `data`; None when its other
    operands are not constant or the op is malformed."""
    try:
        if node.op_type == "Cast":
            return data.astype(ir.DataType(node.attributes.get_int("to")).numpy())
        if node.op_type == "Flatten":
            axis = node.attributes.get_int("axis", 1) % (data.ndim + 1) if data.ndim else 0
            return data.reshape(int(np.prod(data.shape[:axis])), int(np.prod(data.shape[axis:])))
        if node.op_type == "Reshape":
            shape = _operand(node, 1)
            if shape is None:
                return None
            dims = [int(d) for d in shape.reshape(-1)]
            if not node.attributes.get_int("allowzero", 0):
                dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
            return data.reshape(dims)
        if "axes" in node.attributes:  # before opset 13
            axes = tuple(int(axis) for axis in node.attributes.get_ints("axes"))
        elif len(node.inputs) > 1 and node.inputs[1] is not None:
            array = _operand(node, 1)
            if array is None:
                return None
            axes = tuple(int(axis) for axis in array.reshape(-1))
        elif node.op_type == "Squeeze":
            axes = tuple(i for i, d in enumerate(data.shape) if d == 1)  # no axes: every unit dim
        else:
            return None
        return np.expand_dims(data, axes) if node.op_type == "Unsqueeze" else np.squeeze(data, axes)
    except (ValueError, TypeError, IndexError):  # a bad axis or shape; numpy raises AxisError, a ValueError
        return None


def _operand(node: ir.Node, index: int) -> np.ndarray | None:
    return constant_array(node.inputs[index]) if len(node.inputs) > index else None


def _dequantized(node: ir.Node) -> np.ndarray | None:
    """What a DequantizeLinear of constants computes, (data - zero point) · scale per tensor or per
    axis; None when an input is not constant or it quantizes blockwise (not read here)."""
    if "block_size" in node.attributes or len(node.inputs) < 2:
        return None
    data, scale = _operand(node, 0), _operand(node, 1)
    has_zero_point = len(node.inputs) > 2 and node.inputs[2] is not None
    zero_point = _operand(node, 2) if has_zero_point else np.zeros((), np.int32)
    if data is None or scale is None or zero_point is None:
        return None
    if scale.size > 1:
        axis = node.attributes.get_int("axis", 1) % data.ndim
        shape = [1] * data.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape) if zero_point.size > 1 else zero_point
    return ((data.astype(np.float32) - zero_point.astype(np.float32)) * scale.astype(np.float32)).astype(scale.dtype)


# The look-through ops that only move elements, so a gradient through them reaches the source as is.
_SHAPE_ONLY = frozenset({"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"})


def constant_source(value: ir.Value | None) -> ir.Value | None:
    """The initializer or `Constant` node output whose elements `value` holds, through the shape
    ops an exporter wraps around a weight (Paddle2ONNX's ``Reshape(Constant)`` bias); None when
    `value` is computed, or reaches its constant through anything that changes the elements."""
    while value is not None:
        if value.is_initializer():
            return value
        producer = value.producer()
        if producer is None or producer.domain not in ("", "ai.onnx"):
            return None
        if producer.op_type == "Constant":
            return value if constant_tensor(value) is not None else None
        if producer.op_type not in _SHAPE_ONLY or not producer.inputs:
            return None
        value = producer.inputs[0]
    return None


def set_constant(source: ir.Value, array: np.ndarray) -> None:
    """Write `array` into the initializer or `Constant` node that `source` (see `constant_source`)
    is, in its own dtype, shape and attribute form, so that nothing else of the model changes."""
    old = constant_tensor(source)
    if old is None:
        raise ValueError(f"{source.name!r} is not a constant")
    array = np.asarray(array, dtype=old.dtype.numpy()).reshape(old.shape.numpy())
    if source.is_initializer():
        source.const_value = ir.tensor(array, name=source.name)
        return
    node = source.producer()
    if node is None:
        raise ValueError(f"{source.name!r} is neither an initializer nor a Constant node's output")
    ((name, attribute),) = node.attributes.items()
    if name == "value":
        new = ir.AttrTensor(name, ir.tensor(array, name=attribute.value.name))
    elif name in ("value_float", "value_int"):
        new = (ir.AttrFloat32 if name == "value_float" else ir.AttrInt64)(name, array.item())
    elif name in ("value_floats", "value_ints"):
        new = (ir.AttrFloat32s if name == "value_floats" else ir.AttrInt64s)(name, array.reshape(-1).tolist())
    else:
        raise ValueError(f"cannot write a {name!r} Constant")
    node.attributes[name] = new


def weight_constants(nodes: Iterable[ir.Node], inputs: Mapping[str, tuple[int, ...]] = WEIGHT_INPUTS) -> list[ir.Value]:
    """The float constants (see `constant_source`) that feed `nodes`' weight `inputs` (input
    indices by op type), each once, in the order of the nodes."""
    found: dict[ir.Value, None] = {}  # ordered, each constant once
    for node in nodes:
        for index in inputs.get(node.op_type, ()):
            source = constant_source(node.inputs[index] if index < len(node.inputs) else None)
            tensor = constant_tensor(source)
            if source is not None and tensor is not None and tensor.dtype.is_floating_point():
                found[source] = None
    return list(found)


def count_parameters(nodes: Iterable[ir.Node]) -> int:
    """The number of parameters of `nodes`: the elements of their layers' float weights and biases."""
    return sum(tensor.size for value in weight_constants(nodes) if (tensor := constant_tensor(value)) is not None)
