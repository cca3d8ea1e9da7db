"""Reads the weights of a model's SE blocks (or its blocks of every kind) out, in the layout
`insert --weights` takes back."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.graph import conv_before, node_label, scoped_name
from se_onnx.passes.find import SEBlock, find_se
from se_onnx.passes.find_attention import AttentionBlock, find_attention


def block_key(block: SEBlock | AttentionBlock) -> str:
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


def export_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """The weights of every block of every kind as fp32 arrays keyed "<block>.<key>": SE blocks as
    `export_se_weights` writes them, the other kinds in `se_onnx.ir.attention`'s layout per kind
    (ECA: conv.weight, and conv.bias where its conv has one; CBAM: fc1/fc2 weight and bias,
    spatial.weight, spatial.bias; coordinate attention: conv1, conv_h, conv_w weight and bias),
    each with "<block>.gate.gain" for a gate with a gain. `insert --block KIND --weights` takes
    one kind's blocks back."""
    blocks = [block for block in find_attention(model) if block.se is None or block.se.squeeze_channels is not None]
    if not blocks:
        raise SeOnnxError("the model has no attention block (nor two-layer SE block) to export weights from")
    arrays: dict[str, np.ndarray] = {}
    keys: set[str] = set()
    for block in blocks:
        key = block_key(block)
        if key in keys:
            raise SeOnnxError(f"two blocks follow {key!r}; their weights cannot be told apart")
        keys.add(key)
        weights = block.se.weights() if block.se is not None else block.weights
        assert weights is not None  # every kind but SE carries its weights
        for name, array in weights.arrays().items():
            arrays[f"{key}.{name}"] = np.asarray(array, dtype=np.float32)
    return arrays
