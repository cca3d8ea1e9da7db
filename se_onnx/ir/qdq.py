"""QuantizeLinear → DequantizeLinear pairs, as ONNX Runtime's QDQ format wraps each op's output.

A QDQ model computes in float between a DequantizeLinear and the next QuantizeLinear; each pair
only rounds its tensor to the int8/uint8 grid. The passes read a block's math through the pairs,
treat a pair whose zero point is the type's minimum as the Relu that ONNX Runtime's quantizer
folds into it, and copy a pair to requantize what they add. (Weights stored as DequantizeLinear of
integer constants are constants to `se_onnx.ir.constants`.)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from se_onnx.ir.constants import constant_array, is_quantize_op


def qdq_pair_before(value: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """(QuantizeLinear, DequantizeLinear) when `value` is the output of such a pair, else None."""
    dequantize = value.producer()
    if not is_quantize_op(dequantize, "DequantizeLinear") or dequantize.inputs[0] is None:
        return None
    quantize = dequantize.inputs[0].producer()
    if not is_quantize_op(quantize, "QuantizeLinear") or quantize.inputs[0] is None:
        return None
    return quantize, dequantize


def through_qdq(value: ir.Value) -> ir.Value:
    """The float value that the Q/DQ pairs ending in `value` round (`value` itself when none)."""
    while (pair := qdq_pair_before(value)) is not None:
        value = _rounded(pair)
    return value


def _rounded(pair: tuple[ir.Node, ir.Node]) -> ir.Value:
    """The float input of a pair from `qdq_pair_before`, which checked that it has one."""
    value = pair[0].inputs[0]
    assert value is not None
    return value


def clips_at_zero(value: ir.Value) -> bool:
    """Whether `value` leaves a Q/DQ pair whose zero point is its integer type's minimum: the pair
    then clips negatives to 0, which is how ONNX Runtime's quantizer folds a Relu away."""
    pair = qdq_pair_before(value)
    if pair is None:
        return False
    quantize = pair[0]
    zero_point_value = quantize.inputs[2] if len(quantize.inputs) > 2 else None
    if zero_point_value is None:
        return True  # uint8 with zero point 0
    zero_point = constant_array(zero_point_value)
    if zero_point is None or not np.issubdtype(zero_point.dtype, np.integer):
        return False
    return bool(np.all(zero_point == np.iinfo(zero_point.dtype).min))
