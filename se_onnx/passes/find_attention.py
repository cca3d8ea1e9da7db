"""Finds a model's attention blocks of every kind: SE (`se_onnx.passes.find`), ECA, CBAM and
coordinate attention, in the forms se-onnx writes them and the forms PyTorch's exporters
(TorchScript and dynamo) and Paddle2ONNX write.

Each kind is matched backwards from its last rescale Mul, one stage at a time, with the stages and
near-miss reasons of `se_onnx.passes.find`, and its weights are normalized into the layout of
`se_onnx.ir.attention` (1×1 convs, Gemms and MatMuls as Linear out × in, biases folded in). Between
the stages the matchers read through the ops that only move dims around (Reshape, Squeeze,
Unsqueeze, Transpose, Flatten, Expand on their first input), as exporters write them:

    eca    GlobalAveragePool | ReduceMean over H, W → … → Conv1d (1 → 1, k; its bias inside or in
           an Add of one constant) → … → Sigmoid (× gain) → … → Mul(x, ·). torch.onnx writes
           ECA-Net's squeeze(-1).transpose(-1, -2) as Squeeze → Transpose and timm's view(N, 1, -1)
           as a Reshape, and expand_as as an Expand; Paddle's conv1d is Unsqueeze → Conv2d (1 × 1 ×
           1 × k) → Add(bias) → Squeeze. In tf2onnx's NHWC islands the mean is over axes 1, 2 of
           an N×H×W×C map and the gate is Reshaped to N×1×1×C (CBAM and coord: NCHW only).
    cbam   Mul(x′, σ(Conv k×k (2 → 1) (Concat(ReduceMean(x′, C), ReduceMax(x′, C)), either order))),
           x′ = Mul(x, σ(mlp(avg(x)) + mlp(max(x)))), avg a GlobalAveragePool or ReduceMean over
           H, W, max a GlobalMaxPool or ReduceMax, mlp one shared pair of layers with an activation;
           the spatial conv's bias inside or in an Add, and a BatchNormalization after it (timm's
           ConvNormAct) folded into its weights
    coord  Mul(Mul(x, a), b), {a, b} the two gates σ(1×1 Conv) of the H and the W half of one Split
           of act(1×1 Conv (Concat(ReduceMean(x, W), Transpose(ReduceMean(x, H))))) on axis 2, a
           BatchNormalization after that conv (the paper's conv1 → bn1) folded in, act any of
           `match_activation`'s, the hand-written h_swish h·ReLU6(h + 3)/6 among them

Paddle2ONNX's forms are read as they come: weights as Constant nodes, biases in separate Adds, an
Identity after each Add and Mul, BatchNorm left a node.

What does not count: a pooled 1×1 conv with no Sigmoid gate, a global-context block (attention
pooling by Softmax and MatMul, not a mean), CBAM's spatial gate alone, and MLPs that are not one
shared MLP; these are near-misses with a reason. An "effective SE" block (one layer, hard sigmoid)
is an SE block, as `se_onnx.passes.find` has always counted it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from se_onnx.ir.attention import ECA_BIAS_KEY, KIND_NAMES, AttentionWeights
from se_onnx.ir.constants import constant_array, is_constant, value_dtype
from se_onnx.ir.graph import (
    MAIN_GRAPH,
    float_attribute,
    graphs,
    int_attribute,
    ints_attribute,
    node_label,
    required_input,
)
from se_onnx.passes.find import (
    Mismatch,
    NearMiss,
    SEBlock,
    Stage,
    back_through,
    check_private,
    detect,
    match_activation,
    match_block,
    match_both_orders,
    match_gate,
    match_layer,
    real_producer,
    same_rounding,
    with_pass_throughs,
)

_LAYOUT_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Expand")
# Ops that pool a feature map down to a descriptor: a Mul whose gate reads x through one is a candidate.
_POOLING_OPS = frozenset(
    {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum", "AveragePool", "MatMul", "Softmax"}
)
# How many nodes the near-miss search walks back from a gate before giving up.
_CANDIDATE_SEARCH_LIMIT = 48


@dataclasses.dataclass
class AttentionBlock:
    """One block of any kind found in a model; its node and value references belong to that model."""

    kind: str  # se, eca, cbam or coord
    input: ir.Value  # the feature map it rescales
    output: ir.Value  # its last rescale Mul's output
    nodes: tuple[ir.Node, ...]  # every node of the block, the last rescale Mul last
    channels: int | None
    dtype: ir.DataType | None
    weights: AttentionWeights | None  # None for an SE block (see `se`)
    details: dict  # what the kind's report adds: kernel, hidden width, the ops that pool
    graph: str = MAIN_GRAPH
    se: SEBlock | None = None  # the SE block, for kind "se"

    @property
    def rescale(self) -> ir.Node:
        return self.nodes[-1]

    def to_dict(self) -> dict:
        if self.se is not None:
            return {"kind": "se", **self.se.to_dict()}
        return {
            "kind": self.kind,
            "input": self.input.name,
            "output": self.output.name,
            "channels": self.channels,
            **self.details,
            "gate_gain": self.weights.gate_gain if self.weights is not None else None,
            "dtype": self.dtype.name if self.dtype is not None else None,
            "graph": self.graph,
            "nodes": [node.name for node in self.nodes],
        }


@dataclasses.dataclass
class AttentionDetection:
    """The blocks of every kind, and the near-misses that are none of them."""

    blocks: list[AttentionBlock]
    near_misses: list[NearMiss]


def find_attention(model: ir.Model, kind: str | None = None) -> list[AttentionBlock]:
    """Every block of `kind` (None: of every kind) in the model: SE blocks first, then the others,
    each in graph order, main graph first."""
    blocks = detect_attention(model).blocks
    return [block for block in blocks if kind is None or block.kind == kind]


def detect_attention(model: ir.Model) -> AttentionDetection:
    """The blocks of every kind in every graph, and the near-misses: Muls whose other operand is
    computed from a pooling of the rescaled tensor that no kind claims, with the reason of the
    kind whose match got furthest."""
    se = detect(model)
    blocks = [_se_block(block) for block in se.blocks]
    claimed = {id(node) for block in blocks for node in block.nodes}
    candidates: list[tuple[ir.Node, str]] = []
    for graph, path in graphs(model):
        for node in graph:
            if node.op_type != "Mul" or node.domain != "" or len(node.inputs) != 2 or id(node) in claimed:
                continue
            candidates.append((node, path))
            for match in _MATCHERS.values():
                try:
                    block = match(node)
                except Mismatch:
                    continue
                if not any(id(member) in claimed for member in block.nodes):
                    block.graph = path
                    blocks.append(block)
                    claimed.update(id(member) for member in block.nodes)
                    break
    near_misses = [
        miss for node, path in candidates if id(node) not in claimed and (miss := _near_miss(node, path)) is not None
    ]
    return AttentionDetection(blocks, near_misses)


def _se_block(block: SEBlock) -> AttentionBlock:
    return AttentionBlock(
        "se", block.input, block.output, block.nodes, block.channels, block.dtype, None, {}, block.graph, block
    )


def _near_miss(mul: ir.Node, path: str) -> NearMiss | None:
    """The closest kind's reason for a candidate Mul, or None when the Mul is no candidate."""
    if not any(_pools(operand, mul.inputs[1 - index]) for index, operand in enumerate(mul.inputs)):
        return None
    best: tuple[Stage, str] | None = None
    for kind, match in {"se": match_block, **_MATCHERS}.items():
        try:
            match(mul)
        except Mismatch as mismatch:
            if best is None or mismatch.stage > best[0]:
                best = (mismatch.stage, f"closest to {KIND_NAMES[kind]}: {mismatch.reason}")
        else:  # a block that shares nodes with another one
            best = (Stage.BLOCK, f"a {KIND_NAMES[kind]} block whose nodes another block also claims")
            break
    assert best is not None
    return NearMiss(node_label(mul), best[0], best[1], path)


def _pools(gate: ir.Value | None, x: ir.Value | None) -> bool:
    """Whether `gate` is computed from `x` through a pooling op (a candidate for an attention gate)."""
    if gate is None or x is None or is_constant(gate) or is_constant(x):
        return False
    seen: set[int] = set()
    stack = [gate]
    while stack and len(seen) < _CANDIDATE_SEARCH_LIMIT:
        node = real_producer(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in _POOLING_OPS and any(
            value is not None and _through_layout(value)[1] is x for value in node.inputs
        ):
            return True
        stack.extend(value for value in node.inputs if value is not None and value is not x)
    return False


# --- Stages the kinds share ----------------------------------------------------------------------


def _through_layout(value: ir.Value) -> tuple[tuple[ir.Node, ...], ir.Value]:
    """Back through the ops that only move dims: (those nodes in graph order, the value before them)."""
    return back_through(value, _LAYOUT_OPS)


def _sigmoid_gate(value: ir.Value, where: str) -> tuple[float, tuple[ir.Node, ...], ir.Value]:
    """Pattern: … → Sigmoid (× scalar gain) → …: (gain, nodes, the value before the Sigmoid and any
    layout ops before it)."""
    after, value = _through_layout(value)
    gate, gate_nodes, before = match_gate(value)
    if gate.op_type != "Sigmoid":
        raise Mismatch(Stage.GATE, f"the {where} gate is {gate.describe()}, not a Sigmoid")
    ahead, before = _through_layout(before)
    return gate.gain, (*ahead, *gate_nodes, *after), before


def _reduce_axes(node: ir.Node, rank: int) -> list[int] | None:
    """A Reduce op's axes, non-negative for a tensor of `rank`; None when not constant."""
    if "axes" in node.attributes:
        axes = ints_attribute(node, "axes", [])
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        if array is None:
            return None
        axes = [int(axis) for axis in array.reshape(-1)]
    else:
        axes = list(range(rank))
    return sorted(axis % rank for axis in axes)


def _rank(x: ir.Value, default: int) -> int:
    return default if x.shape is None else len(x.shape)


def _channels(x: ir.Value, channels_last: bool = False) -> int | None:
    dim = x.shape[-1 if channels_last else 1] if x.shape is not None and len(x.shape) > 1 else None
    return dim if isinstance(dim, int) else None


def _global_pool(
    value: ir.Value, x: ir.Value, kind: str, stage: Stage, *, channels_last: bool = False
) -> tuple[ir.Node, ...]:
    """Pattern: global average (kind "avg": GlobalAveragePool, ReduceMean) or max (kind "max":
    GlobalMaxPool, ReduceMax) of x over every spatial axis (with `channels_last`, a Reduce over
    axes 1…rank-2 of an N×spatial×C map), then any layout ops."""
    layout, value = _through_layout(value)
    node = real_producer(value)
    ops = {"avg": ("GlobalAveragePool", "ReduceMean"), "max": ("GlobalMaxPool", "ReduceMax")}[kind]
    window = {"avg": "AveragePool", "max": "MaxPool"}[kind]
    if node is not None and node.op_type == window and _covers_the_map(node, x, layout):
        return (node, *layout)  # torch.onnx's adaptive pool to 1 × 1 of a map of static size
    if node is None or node.op_type not in ops or node.domain != "":
        found = "a graph input" if node is None else node.op_type
        raise Mismatch(stage, f"expected a global {kind} pool ({' or '.join(ops)}), found {found}")
    if not same_rounding(required_input(node), x):
        raise Mismatch(stage, f"the {node.op_type} does not pool the tensor the block rescales")
    rank = _rank(x, 4)
    spatial = list(range(1, rank - 1)) if channels_last else list(range(2, rank))
    if (node.op_type.startswith("Reduce") or channels_last) and _reduce_axes(node, rank) != spatial:
        raise Mismatch(stage, f"{node.op_type} {node.name!r} does not reduce exactly the spatial axes")
    return (node, *layout)


def _means_channels_last(value: ir.Value, x: ir.Value) -> bool:
    """Whether `value` is, past layout ops, a ReduceMean of x over axes 1…rank-2: the global mean of
    an N×spatial×C map, as tf2onnx writes Keras' GlobalAveragePooling2D in its NHWC islands."""
    node = real_producer(_through_layout(value)[1])
    rank = _rank(x, 4)
    return node is not None and node.op_type == "ReduceMean" and _reduce_axes(node, rank) == list(range(1, rank - 1))


def _check_channels_last_gate(gate_operand: ir.Value, x: ir.Value) -> None:
    """An N×spatial×C map needs its gate as N×1…×C: the last layout op before the Mul a Reshape to
    (·, 1…, C or -1). A gate left N×C×1… would broadcast the channels over the spatial axes."""
    layout, _ = _through_layout(gate_operand)
    target = constant_array(layout[-1].inputs[1]) if layout and layout[-1].op_type == "Reshape" else None
    channels, rank = _channels(x, channels_last=True), _rank(x, 4)
    if (
        target is None
        or target.size != rank
        or list(target[1:-1]) != [1] * (rank - 2)
        or (channels is not None and int(target[-1]) not in (-1, channels))
    ):
        raise Mismatch(Stage.BLOCK, "the gate is not reshaped to N×1…×C for the channels-last feature map")


def _covers_the_map(pool: ir.Node, x: ir.Value, layout: tuple[ir.Node, ...]) -> bool:
    """An AveragePool/MaxPool whose one window is the whole spatial extent of x: its kernel is x's
    static spatial shape, or, where that is unknown, one unpadded window Flattened into the layer
    that maps C features (a larger map would flatten to more features than the layer takes)."""
    if not same_rounding(required_input(pool), x) or any(ints_attribute(pool, "pads", [])):
        return False
    kernel = ints_attribute(pool, "kernel_shape", [])
    spatial = list(x.shape[2:]) if x.shape is not None else None
    if spatial is not None and all(isinstance(dim, int) for dim in spatial):
        return kernel == spatial
    return ints_attribute(pool, "strides", [1] * len(kernel)) == kernel and any(n.op_type == "Flatten" for n in layout)


def _channel_reduction(value: ir.Value, x1: ir.Value) -> tuple[ir.Node, ...]:
    """Pattern: ReduceMean | ReduceMax of x1 over the channel axis, keeping it or Unsqueezed back
    on axis 1 (torch.max(x, 1)[0].unsqueeze(1)); its nodes, the reduction first."""
    node = real_producer(value)
    nodes: tuple[ir.Node, ...] = ()
    if node is not None and node.op_type == "Unsqueeze":
        nodes, node = (node,), real_producer(required_input(node))
    if node is None or node.op_type not in ("ReduceMean", "ReduceMax") or not same_rounding(required_input(node), x1):
        raise Mismatch(Stage.SQUEEZE, "the Concat is not of the channel-wise mean and max of the rescaled map")
    keeps = int_attribute(node, "keepdims", 1) == 1
    if _reduce_axes(node, _rank(x1, 4)) != [1] or keeps == bool(nodes):
        raise Mismatch(Stage.SQUEEZE, f"{node.op_type} {node.name!r} does not reduce the channel axis alone")
    return (node, *nodes)


def _finish(
    kind: str,
    x: ir.Value,
    mul: ir.Node,
    nodes: tuple[ir.Node, ...],
    weights: AttentionWeights,
    details: dict,
    *,
    channels_last: bool = False,
) -> AttentionBlock:
    """The block, once its nodes (with the Q/DQ pairs between them) are private to it."""
    members = (*with_pass_throughs((*nodes, mul), x), mul)
    check_private(members, mul)
    channels = _channels(x, channels_last)
    return AttentionBlock(kind, x, mul.outputs[0], members, channels, value_dtype(x), weights, details)


def _both_orders(mul: ir.Node, match: Callable[[ir.Node, ir.Value, ir.Value], AttentionBlock]) -> AttentionBlock:
    """`match(mul, x, gate)` with the Mul's operands either way round, never rescaling a constant."""

    def unless_constant(mul: ir.Node, x: ir.Value, gate: ir.Value) -> AttentionBlock:
        if is_constant(x):
            raise Mismatch(Stage.RESCALE, "the Mul rescales a constant")
        return match(mul, x, gate)

    return match_both_orders(mul, unless_constant)


# --- ECA -----------------------------------------------------------------------------------------


def _match_eca(mul: ir.Node) -> AttentionBlock:
    return _both_orders(mul, _eca)


def _eca(mul: ir.Node, x: ir.Value, gate_operand: ir.Value) -> AttentionBlock:
    gain, gate_nodes, before = _sigmoid_gate(gate_operand, "ECA")
    bias_add, add_bias, before = _scalar_bias_add(before)
    conv = real_producer(before)
    if conv is None or conv.op_type != "Conv" or conv.domain != "":
        found = "a graph input" if conv is None else conv.op_type
        raise Mismatch(Stage.GATE, f"the gate does not follow ECA's 1-D conv (found {found})")
    weight = constant_array(conv.inputs[1])
    # Paddle's conv1d is a Conv2d over a 1 × C row: weight 1 × 1 × 1 × k, padded on the last axis alone.
    if weight is None or weight.ndim < 3 or weight.shape[:2] != (1, 1) or any(d != 1 for d in weight.shape[2:-1]):
        shape = None if weight is None else weight.shape
        raise Mismatch(Stage.EXCITATION, f"Conv {conv.name!r} has weight {shape}, not ECA's 1 × 1 × k")
    kernel, rank = int(weight.shape[-1]), weight.ndim - 2
    pads = ints_attribute(conv, "pads", [0] * 2 * rank)
    same = [*[0] * (rank - 1), (kernel - 1) // 2] * 2
    strides = ints_attribute(conv, "strides", [1] * rank)
    if kernel % 2 == 0 or pads != same or any(s != 1 for s in strides) or int_attribute(conv, "group", 1) != 1:
        raise Mismatch(Stage.EXCITATION, f"Conv {conv.name!r} does not keep the channel count (pads {pads})")
    conv_bias = constant_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else 0.0
    if conv_bias is None or np.size(conv_bias) != 1:
        raise Mismatch(Stage.EXCITATION, f"Conv {conv.name!r} has a bias that is not one constant")
    bias = float(np.asarray(conv_bias).item()) + add_bias
    source = required_input(conv)
    channels_last = _means_channels_last(source, x)
    pool = _global_pool(source, x, "avg", Stage.SQUEEZE, channels_last=channels_last)
    if channels_last:
        _check_channels_last_gate(gate_operand, x)
    tensors = {"conv.weight": weight.reshape(1, 1, kernel).astype(np.float32)}
    if bias != 0:
        tensors[ECA_BIAS_KEY] = np.array([bias], np.float32)
    details = {"kernel": kernel, "squeeze": pool[0].op_type, "layout": "NHWC" if channels_last else "NCHW"}
    nodes = (*pool, conv, *bias_add, *gate_nodes)
    weights = AttentionWeights("eca", tensors, gain)
    return _finish("eca", x, mul, nodes, weights, details, channels_last=channels_last)


def _scalar_bias_add(value: ir.Value) -> tuple[tuple[ir.Node, ...], float, ir.Value]:
    """Pattern: Add(y, b), b a constant of one element: a conv's bias kept apart, as Paddle2ONNX
    writes it; (the Add, b, y), or ((), 0, value) when `value` is no such Add."""
    add = real_producer(value)
    if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return (), 0.0, value
    for operand, constant in (add.inputs, add.inputs[::-1]):
        array = constant_array(constant)
        if operand is not None and not is_constant(operand) and array is not None and array.size == 1:
            return (add,), float(array.item()), operand
    return (), 0.0, value


def _batch_norm(value: ir.Value) -> tuple[tuple[ir.Node, ...], np.ndarray, np.ndarray, ir.Value]:
    """Pattern: BatchNormalization(y) in inference form, its statistics constant: not folded into
    the conv before it, as Paddle2ONNX and torch.onnx without constant folding write it; (the
    node, scale s, shift t, y), the node computing y·s + t per channel; ((), 1, 0, value) when
    `value` is no such node."""
    node = real_producer(value)
    if node is None or node.op_type != "BatchNormalization" or node.domain != "":
        return (), np.ones(1, np.float32), np.zeros(1, np.float32), value
    stats = [constant_array(operand) for operand in node.inputs[1:5]]
    training = int_attribute(node, "training_mode", 0) or any(output.uses() for output in node.outputs[1:])
    if len(stats) != 4 or any(array is None for array in stats) or training:
        raise Mismatch(Stage.EXCITATION, f"BatchNormalization {node.name!r} is not in inference form with constants")
    gamma, beta, mean, var = (np.asarray(array, np.float64).reshape(-1) for array in stats)
    scale = gamma / np.sqrt(var + float_attribute(node, "epsilon", 1e-5))
    return (node,), scale.astype(np.float32), (beta - mean * scale).astype(np.float32), required_input(node)


# --- CBAM ----------------------------------------------------------------------------------------


def _match_cbam(mul: ir.Node) -> AttentionBlock:
    return _both_orders(mul, _cbam)


def _cbam(mul: ir.Node, x1: ir.Value, gate_operand: ir.Value) -> AttentionBlock:
    spatial_gain, spatial_gate, before = _sigmoid_gate(gate_operand, "spatial")
    norm, norm_scale, norm_shift, before = _batch_norm(before)
    bias_add, add_bias, before = _scalar_bias_add(before)
    conv = real_producer(before)
    weight = constant_array(conv.inputs[1]) if conv is not None and conv.op_type == "Conv" else None
    if conv is None or weight is None or weight.shape[:2] != (1, 2) or weight.ndim != 4:
        raise Mismatch(Stage.GATE, "the gate does not follow a 2 → 1 channel conv (CBAM's spatial attention)")
    kernel = int(weight.shape[2])
    if weight.shape[3] != kernel or ints_attribute(conv, "pads", [0] * 4) != [kernel // 2] * 4:
        raise Mismatch(Stage.EXCITATION, f"Conv {conv.name!r} is not a square 'same' conv")
    conv_bias = constant_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else 0.0
    if conv_bias is None or np.size(conv_bias) != 1 or norm_scale.size != 1:
        raise Mismatch(Stage.EXCITATION, f"Conv {conv.name!r} has a bias or BatchNorm that is not one constant")
    # BatchNorm folded in: σ((w∗p + b)·s + t) = σ((w·s)∗p + b·s + t).
    bias = (float(np.asarray(conv_bias).item()) + add_bias) * norm_scale + norm_shift
    concat = real_producer(required_input(conv))
    if concat is None or concat.op_type != "Concat" or len(concat.inputs) != 2 or int_attribute(concat, "axis", 0) != 1:
        raise Mismatch(Stage.EXCITATION, "the spatial conv does not read a Concat of two maps on the channel axis")
    reductions = [_channel_reduction(value, x1) for value in concat.inputs if value is not None]
    reducers = [node for nodes in reductions for node in nodes]
    order = [nodes[0].op_type for nodes in reductions]
    if sorted(order) != ["ReduceMax", "ReduceMean"]:
        raise Mismatch(Stage.SQUEEZE, f"the Concat joins {' and '.join(order)}, not a mean and a max")
    # Normalized to the canonical [mean, max] input order.
    spatial_weight = weight.astype(np.float32) * norm_scale.item()
    if order[0] == "ReduceMax":
        spatial_weight = spatial_weight[:, ::-1].copy()
    channel_mul = real_producer(x1)
    if channel_mul is None or channel_mul.op_type != "Mul" or len(channel_mul.inputs) != 2:
        raise Mismatch(Stage.BLOCK, "the spatial gate rescales a map that no channel gate rescaled (not CBAM)")
    channel = _both_orders(channel_mul, _cbam_channel)
    if channel.weights is None or not np.isclose(channel.weights.gate_gain, spatial_gain):
        raise Mismatch(Stage.BLOCK, "CBAM's channel and spatial gates have different gains")
    tensors = {
        **channel.weights.tensors,
        "spatial.weight": spatial_weight,
        "spatial.bias": bias.astype(np.float32),
    }
    weights = AttentionWeights("cbam", tensors, spatial_gain)
    details = {**channel.details, "kernel": kernel, "spatial_pools": order}
    nodes = (*channel.nodes, *reducers, concat, conv, *bias_add, *norm, *spatial_gate)
    block = _finish("cbam", channel.input, mul, nodes, weights, details)
    return block


def _cbam_channel(mul: ir.Node, x: ir.Value, gate_operand: ir.Value) -> AttentionBlock:
    """CBAM's channel attention, Mul(x, σ(mlp(avg(x)) + mlp(max(x)))); its weights are the MLP's."""
    gain, gate_nodes, before = _sigmoid_gate(gate_operand, "channel")
    add = real_producer(before)
    if add is None or add.op_type != "Add" or any(value is None or is_constant(value) for value in add.inputs):
        raise Mismatch(Stage.EXCITATION, "the channel gate does not follow a sum of two MLP branches")
    branches = {}
    for value in add.inputs:
        assert value is not None
        last = match_layer(value)
        activation, activation_nodes, hidden = match_activation(required_input(last.nodes[0]))
        if activation is None:
            raise Mismatch(Stage.ACTIVATION, "CBAM's MLP has no activation between its layers")
        first = match_layer(hidden, Stage.ACTIVATION)
        source = required_input(first.nodes[0])
        kind = "max" if _is_max_pool(source) else "avg"
        pool = _global_pool(source, x, kind, Stage.SQUEEZE)
        branches[kind] = (first, last, (*pool, *first.nodes, *activation_nodes, *last.nodes), activation)
    if set(branches) != {"avg", "max"}:
        raise Mismatch(Stage.SQUEEZE, "the two MLP branches do not read an average and a max pool")
    (avg_first, avg_last, avg_nodes, activation), (max_first, max_last, max_nodes, _) = branches["avg"], branches["max"]
    shared = all(
        np.array_equal(a.weights.weight, b.weights.weight) and np.array_equal(a.weights.bias, b.weights.bias)
        for a, b in ((avg_first, max_first), (avg_last, max_last))
    )
    if not shared:
        raise Mismatch(Stage.BLOCK, "the average and max branches have different MLPs (CBAM shares one)")
    tensors = {
        "fc1.weight": avg_first.weights.weight,
        "fc1.bias": avg_first.weights.bias,
        "fc2.weight": avg_last.weights.weight,
        "fc2.bias": avg_last.weights.bias,
    }
    details = {
        "squeeze_channels": avg_first.out_features,
        "pools": [avg_nodes[0].op_type, max_nodes[0].op_type],
        "activation": activation.describe(),
    }
    nodes = (*avg_nodes, *max_nodes, add, *gate_nodes)
    return AttentionBlock(
        "cbam", x, mul.outputs[0], (*nodes, mul), _channels(x), None, AttentionWeights("cbam", tensors, gain), details
    )


def _is_max_pool(value: ir.Value) -> bool:
    node = real_producer(_through_layout(value)[1])
    return node is not None and node.op_type in ("GlobalMaxPool", "ReduceMax", "MaxPool")


# --- Coordinate attention ------------------------------------------------------------------------


def _match_coord(mul: ir.Node) -> AttentionBlock:
    return _both_orders(mul, _coord_outer)


def _coord_outer(mul: ir.Node, scaled: ir.Value, gate_operand: ir.Value) -> AttentionBlock:
    inner = real_producer(scaled)
    if inner is None or inner.op_type != "Mul" or len(inner.inputs) != 2:
        raise Mismatch(Stage.GATE, "the gated map is not itself gated (coordinate attention has two gates)")
    outer_gate = _coord_gate(gate_operand)
    best: Mismatch | None = None
    for index in (0, 1):
        x, inner_operand = inner.inputs[index], inner.inputs[1 - index]
        if x is None or inner_operand is None or is_constant(x):
            continue
        try:
            return _coord(mul, inner, x, _coord_gate(inner_operand), outer_gate)
        except Mismatch as mismatch:
            if best is None or mismatch.stage > best.stage:
                best = mismatch
    raise best or Mismatch(Stage.GATE, "the inner Mul has no feature-map operand")


@dataclasses.dataclass(frozen=True)
class _CoordGate:
    gain: float
    nodes: tuple[ir.Node, ...]
    conv: tuple[ir.Node, ...]
    weight: np.ndarray  # C × M
    bias: np.ndarray
    split_output: ir.Value  # the Split output it reads
    transposed: ir.Node | None  # the Transpose back, on the W half


def _coord_gate(value: ir.Value) -> _CoordGate:
    """Pattern: σ(1×1 Conv(h)) (× gain), h a Split output or its Transpose (the W half)."""
    gain, gate_nodes, before = _sigmoid_gate(value, "coordinate")
    layer = match_layer(before)
    if layer.op_type != "Conv":
        raise Mismatch(Stage.EXCITATION, f"the gate follows a {layer.op_type}, not a 1×1 Conv")
    source = required_input(layer.nodes[0])
    transpose = real_producer(source)
    if transpose is not None and transpose.op_type == "Transpose":
        if ints_attribute(transpose, "perm", []) != [0, 1, 3, 2]:
            raise Mismatch(Stage.EXCITATION, f"Transpose {transpose.name!r} does not swap H and W")
        source = required_input(transpose)
    else:
        transpose = None
    split = real_producer(source)
    if split is None or split.op_type not in ("Split", "Slice"):
        raise Mismatch(Stage.ACTIVATION, "the gate's conv does not read a half of a Split (or a Slice)")
    weights = layer.weights
    return _CoordGate(gain, gate_nodes, layer.nodes, weights.weight, weights.bias, source, transpose)


def _coord(mul: ir.Node, inner: ir.Node, x: ir.Value, first: _CoordGate, second: _CoordGate) -> AttentionBlock:
    gate_h, gate_w = (first, second) if second.transposed is not None else (second, first)
    if gate_h.transposed is not None or gate_w.transposed is None:
        raise Mismatch(Stage.ACTIVATION, "the W half is not Transposed back before its gate conv (or the H half is)")
    halves, sizes = _halves(gate_h.split_output, gate_w.split_output)
    if not np.isclose(gate_h.gain, gate_w.gain):
        raise Mismatch(Stage.BLOCK, "the two gates have different gains")
    activation, activation_nodes, hidden = match_activation(required_input(halves[0]))
    norm, norm_scale, norm_shift, hidden = _batch_norm(hidden)  # the CA paper's conv1 → bn1
    shared = match_layer(hidden, Stage.ACTIVATION)
    if norm_scale.size not in (1, shared.out_features):
        raise Mismatch(Stage.ACTIVATION, f"the BatchNorm after conv1 is not over its {shared.out_features} channels")
    concat = real_producer(required_input(shared.nodes[0]))
    if (
        concat is None
        or concat.op_type != "Concat"
        or len(concat.inputs) != 2
        or int_attribute(concat, "axis", 0) % 4 != 2
    ):
        raise Mismatch(Stage.SQUEEZE, "the shared conv does not read a Concat on the H + W axis")
    along_h, along_w = concat.inputs
    assert along_h is not None and along_w is not None
    pool_h = _directional_pool(along_h, x, 3, sizes)
    w_transpose = real_producer(along_w)
    if (
        w_transpose is None
        or w_transpose.op_type != "Transpose"
        or ints_attribute(w_transpose, "perm", []) != [0, 1, 3, 2]
    ):
        raise Mismatch(Stage.SQUEEZE, "the W pooling is not Transposed to N×C×W×1 before the Concat")
    pool_w = _directional_pool(required_input(w_transpose), x, 2, sizes)
    tensors = {
        "conv1.weight": shared.weights.weight * norm_scale[:, None],
        "conv1.bias": shared.weights.bias * norm_scale + norm_shift,
        "conv_h.weight": gate_h.weight,
        "conv_h.bias": gate_h.bias,
        "conv_w.weight": gate_w.weight,
        "conv_w.bias": gate_w.bias,
    }
    details = {
        "squeeze_channels": shared.out_features,
        "activation": activation.describe() if activation is not None else None,
        "pools": [pool_h.op_type, pool_w.op_type],
    }
    nodes = (
        pool_h,
        pool_w,
        w_transpose,
        concat,
        *shared.nodes,
        *norm,
        *activation_nodes,
        *halves,
        gate_w.transposed,
        *gate_h.conv,
        *gate_h.nodes,
        *gate_w.conv,
        *gate_w.nodes,
        inner,
    )
    return _finish("coord", x, mul, nodes, AttentionWeights("coord", tensors, gate_h.gain), details)


def _halves(h_half: ir.Value, w_half: ir.Value) -> tuple[tuple[ir.Node, ...], tuple[int, int] | None]:
    """The nodes that cut the H + W axis into the H half and the W half, in that order: one Split
    on axis 2, or the two Slices torch.onnx writes for torch.split (0…H and H…H + W on axis 2);
    and (H, W) where the cut tells them."""
    h_node, w_node = real_producer(h_half), real_producer(w_half)
    assert h_node is not None and w_node is not None  # `_coord_gate` found a Split or Slice
    if h_node.op_type == "Split":
        if h_node is not w_node or list(h_node.outputs) != [h_half, w_half]:
            raise Mismatch(Stage.ACTIVATION, "the two gates do not read the H and W halves of one Split")
        if int_attribute(h_node, "axis", 0) % 4 != 2:
            raise Mismatch(Stage.ACTIVATION, f"Split {h_node.name!r} is not on the H + W axis")
        array = constant_array(h_node.inputs[1]) if len(h_node.inputs) > 1 else None
        sizes = ints_attribute(h_node, "split", []) or ([] if array is None else [int(v) for v in array.reshape(-1)])
        return (h_node,), (sizes[0], sizes[1]) if len(sizes) == 2 else None
    h_bounds, w_bounds = _slice_bounds(h_node), _slice_bounds(w_node)
    same_source = h_node.op_type == w_node.op_type == "Slice" and h_node.inputs[0] is w_node.inputs[0]
    if not same_source or h_bounds is None or w_bounds is None or h_bounds[0] != 0 or w_bounds[0] != h_bounds[1]:
        raise Mismatch(Stage.ACTIVATION, "the two gates do not read the H half and then the W half of one map")
    return (h_node, w_node), (h_bounds[1], w_bounds[1] - w_bounds[0])


def _slice_bounds(node: ir.Node) -> tuple[int, int] | None:
    """(start, end) of a Slice with unit steps on axis 2 alone; None for any other Slice."""
    operands = [constant_array(value) if value is not None else None for value in node.inputs[1:5]]
    scalars = [int(operand.item()) for operand in operands if operand is not None and operand.size == 1]
    if len(operands) < 3 or len(scalars) != len(operands):
        return None
    starts, ends, axes, *steps = scalars
    if axes % 4 != 2 or steps not in ([], [1]):
        return None
    return starts, ends


def _directional_pool(value: ir.Value, x: ir.Value, axis: int, sizes: tuple[int, int] | None) -> ir.Node:
    """ReduceMean(x) over `axis` alone keeping dims, or the AveragePool (1 × W or H × 1 window)
    that torch.onnx writes for AdaptiveAvgPool2d((None, 1)) and ((1, None)); H and W come from
    x's shape or else from the (`sizes`) the Split cuts."""
    node = real_producer(value)
    if node is None or not same_rounding(required_input(node), x):
        raise Mismatch(Stage.SQUEEZE, "the Concat does not read poolings of the rescaled map")
    if node.op_type == "ReduceMean":
        if _reduce_axes(node, _rank(x, 4)) != [axis] or int_attribute(node, "keepdims", 1) != 1:
            raise Mismatch(Stage.SQUEEZE, f"ReduceMean {node.name!r} does not pool axis {axis} alone")
        return node
    static = x.shape is not None and len(x.shape) == 4 and isinstance(x.shape[axis], int)
    if node.op_type == "AveragePool" and (static or sizes is not None):
        size = x.shape[axis] if static else sizes[axis - 2]  # type: ignore[index]
        expected = [1, size] if axis == 3 else [size, 1]
        if ints_attribute(node, "kernel_shape", []) == expected and not any(ints_attribute(node, "pads", [0] * 4)):
            return node
    raise Mismatch(Stage.SQUEEZE, f"expected a mean over axis {axis} (found {node.op_type})")


_MATCHERS: dict[str, Callable[[ir.Node], AttentionBlock]] = {
    "cbam": _match_cbam,
    "coord": _match_coord,
    "eca": _match_eca,
}
