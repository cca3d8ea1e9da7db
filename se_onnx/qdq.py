"""QuantizeLinear → DequantizeLinear pairs, as ONNX Runtime's QDQ format wraps each op's output.

A QDQ model computes in float between a DequantizeLinear and the next QuantizeLinear; each pair
only rounds its tensor to the int8/uint8 grid. The passes read a block's math through the pairs,
treat a pair whose zero point is the type's minimum as the Relu that ONNX Runtime's quantizer
folds into it, read weights stored as DequantizeLinear of integer constants, and copy a pair to
requantize what they add.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")


def is_op(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in _QDQ_DOMAINS


def qdq_pair_before(value: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """(QuantizeLinear, DequantizeLinear) when `value` is the output of such a pair, else None."""
    dequantize = value.producer()
    if not is_op(dequantize, "DequantizeLinear") or dequantize.inputs[0] is None:
        return None
    quantize = dequantize.inputs[0].producer()
    if not is_op(quantize, "QuantizeLinear") or quantize.inputs[0] is None:
        return None
    return quantize, dequantize


def through_qdq(value: ir.Value) -> ir.Value:
    """The float value that the Q/DQ pairs ending in `value` round (`value` itself when none)."""
    while (pair := qdq_pair_before(value)) is not None:
        value = pair[0].inputs[0]
    return value


def qdq_pairs_between(value: ir.Value, source: ir.Value) -> list[ir.Node]:
    """The Q and DQ nodes of the pairs that end in `value`, in graph order, stopping at `source`."""
    pairs: list[tuple[ir.Node, ir.Node]] = []
    while value is not source and (pair := qdq_pair_before(value)) is not None:
        pairs.append(pair)
        value = pair[0].inputs[0]
    return [node for pair in reversed(pairs) for node in pair]


def clips_at_zero(value: ir.Value, constant: Callable[[ir.Value | None], np.ndarray | None]) -> bool:
    """Whether `value` leaves a Q/DQ pair whose zero point is its integer type's minimum: the pair
    then clips negatives to 0, which is how ONNX Runtime's quantizer folds a Relu away."""
    pair = qdq_pair_before(value)
    if pair is None:
        return False
    quantize = pair[0]
    zero_point_value = quantize.inputs[2] if len(quantize.inputs) > 2 else None
    if zero_point_value is None:
        return True  # uint8 with zero point 0
    zero_point = constant(zero_point_value)
    if zero_point is None or not np.issubdtype(zero_point.dtype, np.integer):
        return False
    return bool(np.all(zero_point == np.iinfo(zero_point.dtype).min))


def dequantized(node: ir.Node, constant: Callable[[ir.Value | None], np.ndarray | None]) -> np.ndarray | None:
    """The float array a DequantizeLinear of constants computes, or None when an input is not
    constant (or the node uses blocked quantization, which the passes do not read)."""
    if not is_op(node, "DequantizeLinear") or "block_size" in node.attributes:
        return None
    data, scale = constant(node.inputs[0]), constant(node.inputs[1]) if len(node.inputs) > 1 else None
    zero_value = node.inputs[2] if len(node.inputs) > 2 else None
    zero_point = constant(zero_value) if zero_value is not None else np.zeros((), np.int32)
    if data is None or scale is None or zero_point is None:
        return None
    if scale.size > 1:  # per-axis: scale and zero point run along `axis`
        axis = node.attributes.get_int("axis", 1) % data.ndim
        shape = [1] * data.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape) if zero_point.size > 1 else zero_point
    return ((data.astype(np.float32) - zero_point.astype(np.float32)) * scale.astype(np.float32)).astype(scale.dtype)
