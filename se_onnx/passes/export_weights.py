"""Reads the weights of a model's SE blocks out, in the layout `insert --weights` takes back."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.graph import conv_before, node_label, scoped_name
from se_onnx.passes.find import SEBlock, find_se


def block_key(block: SEBlock) -> str:
    """The name a block's weights go by: the conv it follows, else its rescale node, prefixed by
    the path of its graph when it sits in a subgraph (as `insert` names its blocks)."""
    conv = conv_before(block.input)
    return scoped_name(node_label(conv if conv is not None else block.rescale), block.graph)


def export_se_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """Every two-layer SE block's fc1/fc2 weights and biases as fp32 arrays keyed
    "<block>.fc1.weight" (S×C), "<block>.fc1.bias" (S), "<block>.fc2.weight" (C×S), "<block>.fc2.bias" (C).

    1×1-conv, Gemm (either transB) and MatMul layers all come out in this Linear layout.
    """
    blocks = [block for block in find_se(model) if block.squeeze_channels is not None]
    if not blocks:
        raise SeOnnxError("the model has no two-layer SE block to export weights from")
    arrays: dict[str, np.ndarray] = {}
    for block in blocks:
        key = block_key(block)
        if f"{key}.fc1.weight" in arrays:
            raise SeOnnxError(f"two SE blocks follow {key!r}; their weights cannot be told apart")
        for name, array in block.weights().arrays().items():
            arrays[f"{key}.{name}"] = np.asarray(array, dtype=np.float32)
    return arrays
