"""Finds the Squeeze-and-Excitation blocks a model already has, in the forms exporters write them.

A block is matched backwards from its rescale Mul, one stage at a time:

    x ─► squeeze ─► layer ─► activation ─► layer ─► gate ─► (Reshape/Unsqueeze) ─► Mul(x, ·)

The matchers read the graph through QuantizeLinear → DequantizeLinear pairs (ONNX Runtime's QDQ
format, `se_onnx.ir.qdq`) and through no-ops (`se_onnx.ir.graph.is_no_op`: the Identity that
Paddle2ONNX writes after each Add and Mul, say): the pairs and no-ops inside a block belong to it.
A feature map may be channels-first (N×C×spatial) or, in the NHWC islands TensorFlow exporters
write, channels-last (N×spatial×C: ReduceMean over axes 1…rank-2, the gate broadcast on the last
axis).

Each stage below is one matcher that states the pattern it accepts in its docstring, checks it
(raising `Mismatch` with the reason a near-miss failed), and normalizes what it found into the
parameters of the canonical block (`se_onnx.ir.se_block`): layers in Linear layout (out × in) with
every bias folded in, the activation as an `Activation`, the gate as a `Gate`. The rewrites in
`se_onnx.passes.fuse` and `se_onnx.passes.strip` work from those normalized parameters alone, so one rewrite
serves every form a matcher accepts.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx_ir as ir

from se_onnx.ir.constants import constant_array, is_constant, value_dtype
from se_onnx.ir.graph import (
    MAIN_GRAPH,
    float_attribute,
    graphs,
    int_attribute,
    ints_attribute,
    node_label,
    pass_throughs_between,
    required_input,
    through_no_ops,
    underlying,
)
from se_onnx.ir.qdq import clips_at_zero
from se_onnx.ir.se_block import Activation, Gate, LayerWeights, SEWeights
from se_onnx.passes.base import SEResult

_LAYER_OPS = ("Conv", "Gemm", "MatMul")
_GATE_BROADCAST_OPS = ("Reshape", "Unsqueeze")
_SQUEEZE_FLATTEN_OPS = ("Flatten", "Reshape", "Squeeze")
# Relative tolerance for recognising the constants of a written-out hard sigmoid (3, 6, 1/6).
_CONSTANT_RTOL = 1e-3


class Stage(enum.IntEnum):
    """How far a match got before it failed; later stages make more convincing near-misses."""

    RESCALE = 0
    GATE = 1
    EXCITATION = 2
    ACTIVATION = 3
    SQUEEZE = 4
    BLOCK = 5


_Block = TypeVar("_Block")


class Mismatch(Exception):
    """A candidate that is not (or not quite) an SE block, and why."""

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ExcitationLayer:
    """One excitation layer as the model wrote it, with its weights normalized (biases folded in)."""

    op_type: str  # Conv, Gemm or MatMul, as the model wrote it
    weights: LayerWeights  # out × in and out, float32
    nodes: tuple[ir.Node, ...]  # the layer node and any separate bias Add
    spatial_rank: int | None  # a 1×1 Conv's spatial rank; None for Gemm and MatMul

    @property
    def in_features(self) -> int:
        return self.weights.in_features

    @property
    def out_features(self) -> int:
        return self.weights.out_features


@dataclasses.dataclass(frozen=True)
class Squeeze:
    """The global spatial mean, and any Flatten/Reshape/Squeeze that drops the unit dims."""

    op_type: str  # GlobalAveragePool or ReduceMean
    nodes: tuple[ir.Node, ...]
    spatial_rank: int | None  # known from ReduceMean's non-negative axes; None otherwise
    channels_last: bool = False  # ReduceMean over axes 1…rank-2 of an N×spatial×C map
    keeps_dims: bool = False  # the mean stays N×1…×C (or N×C×1…) up to the first layer


@dataclasses.dataclass
class SEBlock:
    """One SE block found in a model; its node and value references belong to that model."""

    input: ir.Value  # the feature map that is squeezed and rescaled
    output: ir.Value  # the rescale Mul's output
    squeeze: Squeeze
    layers: tuple[ExcitationLayer, ...]  # two, or one for the "effective SE" variant
    activation: Activation | None
    gate: Gate
    nodes: tuple[ir.Node, ...]  # every node of the block, from squeeze to the rescale Mul
    spatial_rank: int
    dtype: ir.DataType
    graph: str = MAIN_GRAPH  # the path of the graph it sits in (`se_onnx.ir.graph.graphs`)
    channels_last: bool = False  # the feature map is N×spatial×C

    @property
    def layout(self) -> str:
        return "NHWC" if self.channels_last else "NCHW"

    @property
    def channels(self) -> int:
        return self.layers[0].in_features

    @property
    def squeeze_channels(self) -> int | None:
        return self.layers[0].out_features if len(self.layers) == 2 else None

    @property
    def rescale(self) -> ir.Node:
        return self.nodes[-1]

    def weights(self) -> SEWeights:
        """The two layers as `SEWeights` (the one-layer variant has none; see `layers`)."""
        if len(self.layers) != 2:
            raise ValueError("a one-layer SE block has no fc1/fc2 pair")
        (fc1_weight, fc1_bias), (fc2_weight, fc2_bias) = (layer.weights for layer in self.layers)
        return SEWeights(fc1_weight, fc1_bias, fc2_weight, fc2_bias, gate_gain=self.gate.gain)

    def to_dict(self) -> dict:
        return {
            "input": self.input.name,
            "output": self.output.name,
            "channels": self.channels,
            "squeeze_channels": self.squeeze_channels,
            "squeeze": self.squeeze.op_type,
            "layers": [layer.op_type for layer in self.layers],
            "activation": self.activation.describe() if self.activation else None,
            "gate": {
                "op_type": self.gate.op_type,
                "alpha": self.gate.alpha,
                "beta": self.gate.beta,
                "gain": self.gate.gain,
            },
            "spatial_rank": self.spatial_rank,
            "layout": self.layout,
            "dtype": self.dtype.name,
            "graph": self.graph,
            "nodes": [node.name for node in self.nodes],
        }


@dataclasses.dataclass(frozen=True)
class NearMiss:
    """A Mul that looked like an SE rescale but failed a check, with the reason."""

    node: str
    stage: Stage
    reason: str
    graph: str = MAIN_GRAPH

    def to_dict(self) -> dict:
        return {"node": self.node, "stage": self.stage.name.lower(), "reason": self.reason, "graph": self.graph}


@dataclasses.dataclass
class Detection:
    """The SE blocks of a model, and the near-misses worth a look."""

    blocks: list[SEBlock]
    near_misses: list[NearMiss]

    def to_dict(self) -> dict:
        return {
            "blocks": [block.to_dict() for block in self.blocks],
            "near_misses": [miss.to_dict() for miss in self.near_misses],
        }


class FindSE(ir.passes.PassBase):
    """Finds the model's SE blocks and near-misses (an onnx-ir analysis pass: changes nothing).

    The result is an `SEResult` whose report is the `Detection`.
    """

    @property
    def in_place(self) -> bool:
        return True

    @property
    def changes_input(self) -> bool:
        return False

    def call(self, model: ir.Model) -> SEResult[Detection]:
        return SEResult(model, False, detect(model))


def find_se(model: ir.Model) -> list[SEBlock]:
    """Every SE block in the model, main graph first, then If/Loop/Scan bodies, in graph order."""
    return detect(model).blocks


def detect(model: ir.Model) -> Detection:
    """The SE blocks in every graph of the model (subgraphs to any depth), plus near-misses that
    got past the gate and at least one excitation layer before a check failed."""
    blocks: list[SEBlock] = []
    near_misses: list[NearMiss] = []
    for graph, path in graphs(model):
        for node in graph:
            if node.op_type != "Mul" or node.domain != "" or len(node.inputs) != 2:
                continue
            try:
                block = match_block(node)
            except Mismatch as mismatch:
                if mismatch.stage >= Stage.ACTIVATION:
                    near_misses.append(NearMiss(node_label(node), mismatch.stage, mismatch.reason, path))
            else:
                block.graph = path
                blocks.append(block)
    return Detection(blocks, near_misses)


# --- The rescale: Mul(x, gate) in either operand order -------------------------------------------


def match_block(mul: ir.Node) -> SEBlock:
    """Pattern: Mul(x, g) or Mul(g, x), g the gate, possibly Reshaped/Unsqueezed to x's rank."""
    return match_both_orders(mul, _match_from_gate)


def match_both_orders(mul: ir.Node, match: Callable[[ir.Node, ir.Value, ir.Value], _Block]) -> _Block:
    """`match(mul, x, gate)` with the Mul's operands either way round; when neither matches, the
    mismatch that got furthest (the near-miss worth reporting)."""
    best: Mismatch | None = None
    for x_index in (0, 1):
        x, gate_operand = mul.inputs[x_index], mul.inputs[1 - x_index]
        if x is None or gate_operand is None:
            raise Mismatch(Stage.RESCALE, "Mul has an empty input")
        try:
            return match(mul, x, gate_operand)
        except Mismatch as mismatch:
            if best is None or mismatch.stage > best.stage:
                best = mismatch
    assert best is not None
    raise best


def _match_from_gate(mul: ir.Node, x: ir.Value, gate_operand: ir.Value) -> SEBlock:
    if is_constant(x):
        # A gate times a constant is a gate's gain (or a scaled gate), not a rescaled feature map.
        raise Mismatch(Stage.RESCALE, "the Mul rescales a constant")
    broadcast_nodes, gate_output = _strip_gate_broadcast(gate_operand)
    gate, gate_nodes, excitation = match_gate(gate_output)
    if underlying(excitation) is underlying(x):
        # x·gate(x) is an activation (SiLU, HardSwish) on the feature map, not an SE block.
        raise Mismatch(Stage.GATE, "the gate's input is the rescaled tensor itself (an activation)")
    last = match_layer(excitation)
    activation, activation_nodes, hidden = match_activation(required_input(last.nodes[0]))
    layers = (last,) if activation is None else (match_layer(hidden, stage=Stage.ACTIVATION), last)
    squeeze = _match_squeeze(required_input(layers[0].nodes[0]), x)
    _check_widths(layers, x, squeeze.channels_last)
    spatial_rank = _spatial_rank(x, squeeze, layers, broadcast_nodes)
    if squeeze.channels_last:
        _check_channels_last_broadcast(squeeze, broadcast_nodes, layers[0].in_features, spatial_rank)
    nodes = (
        *squeeze.nodes,
        *_layer_nodes(layers[0]),
        *activation_nodes,
        *(_layer_nodes(layers[1]) if len(layers) == 2 else ()),
        *gate_nodes,
        *broadcast_nodes,
        mul,
    )
    nodes = (*with_pass_throughs(nodes, x), mul)
    check_private(nodes, mul)
    return SEBlock(
        input=x,
        output=mul.outputs[0],
        squeeze=squeeze,
        layers=layers,
        activation=activation,
        gate=gate,
        nodes=nodes,
        spatial_rank=spatial_rank,
        dtype=_dtype(x, layers[0]),
        channels_last=squeeze.channels_last,
    )


def with_pass_throughs(nodes: tuple[ir.Node, ...], x: ir.Value) -> tuple[ir.Node, ...]:
    """The block's nodes (without the rescale Mul) and the Q/DQ pairs and no-ops between them,
    which go with the block when it is rewritten or removed; those that make `x` and those around
    the weights (read as constants) stay outside."""
    source = underlying(x)
    members: dict[ir.Node, None] = {}
    for node in nodes:
        for value in node.inputs:
            if value is not None and value is not x and not is_constant(value):
                members.update(dict.fromkeys(pass_throughs_between(value, source)))
        members[node] = None
    members.pop(nodes[-1])
    return tuple(members)


def _strip_gate_broadcast(value: ir.Value) -> tuple[tuple[ir.Node, ...], ir.Value]:
    """Pattern: gate → Reshape/Unsqueeze … → Mul. The reshapes only restore the unit spatial dims,
    which the canonical block does with one Unsqueeze."""
    return back_through(value, _GATE_BROADCAST_OPS)


def back_through(value: ir.Value, op_types: tuple[str, ...]) -> tuple[tuple[ir.Node, ...], ir.Value]:
    """Back from `value` through default-domain `op_types` (ops that only move or reshape dims):
    those nodes in graph order, and the value before them."""
    nodes: list[ir.Node] = []
    producer = real_producer(value)
    while producer is not None and producer.op_type in op_types and producer.domain == "":
        nodes.insert(0, producer)
        value = required_input(producer)
        producer = real_producer(value)
    return tuple(nodes), value


# --- The gate ------------------------------------------------------------------------------------


def match_gate(value: ir.Value) -> tuple[Gate, tuple[ir.Node, ...], ir.Value]:
    """Pattern: Sigmoid(z) | HardSigmoid(z; alpha, beta) | Clip(z + b, 0, h) / h (or · 1/h), each
    optionally times a scalar constant gain (the trainable identity init's 2·σ, NFNets' SE gate).

    The written-out hard sigmoid is normalized to HardSigmoid(alpha=1/h, beta=b/h): PyTorch's
    hardsigmoid exported at old opsets and Keras' hard_sigmoid take this form with b=3, h=6.
    """
    node = real_producer(value)
    if node is not None and node.op_type == "Mul" and node.domain == "":
        split = _split_constant_operand(node)
        if split is not None and split[1].size == 1 and real_producer(split[0]) is not None:
            gated, gain = split
            try:
                gate, nodes, excitation = match_gate(gated)
            except Mismatch:
                pass  # a written-out hard sigmoid's own Mul(·, 1/h)
            else:
                if gate.gain == 1:
                    return dataclasses.replace(gate, gain=float(gain.item())), (*nodes, node), excitation
    if node is None or node.domain != "":
        raise Mismatch(Stage.RESCALE, "neither Mul operand comes from a Sigmoid or hard-sigmoid gate")
    if node.op_type == "Sigmoid":
        return Gate("Sigmoid"), (node,), required_input(node)
    if node.op_type == "HardSigmoid":
        alpha = float_attribute(node, "alpha", 0.2)
        beta = float_attribute(node, "beta", 0.5)
        return Gate("HardSigmoid", alpha, beta), (node,), required_input(node)
    if node.op_type in ("Div", "Mul"):
        return _match_written_out_hard_sigmoid(node)
    raise Mismatch(Stage.RESCALE, f"neither Mul operand comes from a gate (found {node.op_type})")


def _match_written_out_hard_sigmoid(scale: ir.Node) -> tuple[Gate, tuple[ir.Node, ...], ir.Value]:
    split = _scale_operand(scale)
    if split is None:
        raise Mismatch(Stage.RESCALE, f"{scale.op_type} gate candidate has no scalar constant")
    return _hard_sigmoid(*split, (scale,))


def _scale_operand(scale: ir.Node) -> tuple[ir.Value, float] | None:
    """(y, k) of Div(y, c) or Mul(y, c) | Mul(c, y), c a scalar constant: y scaled by k = 1/c or c."""
    split = _split_constant_operand(scale)
    if split is None or split[1].size != 1 or (scale.op_type == "Div" and split[0] is not scale.inputs[0]):
        return None
    operand, factor = split
    return operand, 1.0 / float(factor.item()) if scale.op_type == "Div" else float(factor.item())


def _hard_sigmoid(
    clipped: ir.Value, scale_by: float, scale: tuple[ir.Node, ...]
) -> tuple[Gate, tuple[ir.Node, ...], ir.Value]:
    """Pattern: ReLU6-like(z + b) (`_clip`), scaled by 1/h (the `scale` node, or the Div or Mul
    that a hard swish applies after its own Mul): HardSigmoid(alpha=1/h, beta=b/h) of z."""
    clip_nodes, shifted, low, high = _clip(clipped)
    if not clip_nodes:
        raise Mismatch(Stage.RESCALE, "neither Mul operand comes from a gate")
    if low is None or high is None or not np.isclose(low, 0.0) or high <= 0:
        raise Mismatch(Stage.GATE, f"hard-sigmoid Clip bounds ({low}, {high}) are not (0, h)")
    if not np.isclose(scale_by * high, 1.0, rtol=_CONSTANT_RTOL):
        raise Mismatch(Stage.GATE, f"hard sigmoid scales Clip(0, {high:g}) by {scale_by:g}, not 1/{high:g}")
    shift = real_producer(shifted)
    if shift is None or shift.op_type != "Add":
        raise Mismatch(Stage.GATE, "hard-sigmoid Clip does not follow an Add of its offset")
    split = _split_constant_operand(shift)
    if split is None or split[1].size != 1:
        raise Mismatch(Stage.GATE, "hard-sigmoid Add has no scalar constant offset")
    excitation, offset = split
    # Rounded to float32, the precision a HardSigmoid attribute holds, so a fused model reports the same gate.
    alpha, beta = (float(np.float32(v)) for v in (1.0 / high, float(offset.item()) / high))
    gate = Gate("HardSigmoid", alpha=alpha, beta=beta)
    return gate, (shift, *clip_nodes, *scale), excitation


def _clip(value: ir.Value) -> tuple[tuple[ir.Node, ...], ir.Value, float | None, float | None]:
    """Pattern: Clip(z, low, high), or ReLU6 as some exporters write it, Relu or Max(·, low) and
    Min(·, high) in either order: (those nodes in graph order, z, low, high); no nodes when
    `value` is none of them."""
    node = real_producer(value)
    if node is not None and node.op_type == "Clip" and node.domain == "":
        return (node,), required_input(node), *_clip_bounds(node)
    nodes: list[ir.Node] = []
    bounds: dict[str, float] = {}
    while node is not None and node.domain == "" and len(nodes) < 2:
        if node.op_type == "Relu" and "Max" not in bounds:
            bounds["Max"], value = 0.0, required_input(node)
        elif node.op_type in ("Min", "Max") and node.op_type not in bounds:
            split = _split_constant_operand(node)
            if split is None or split[1].size != 1:
                break
            value, bound = split
            bounds[node.op_type] = float(bound.item())
        else:
            break
        nodes.insert(0, node)
        node = real_producer(value)
    return tuple(nodes), value, bounds.get("Max"), bounds.get("Min")


def _clip_bounds(clip: ir.Node) -> tuple[float | None, float | None]:
    if "min" in clip.attributes or "max" in clip.attributes:  # opset < 11
        return float_attribute(clip, "min", None), float_attribute(clip, "max", None)
    bounds = []
    for index in (1, 2):
        operand = clip.inputs[index] if len(clip.inputs) > index else None
        array = constant_array(operand) if operand is not None else None
        bounds.append(float(array.item()) if array is not None and array.size == 1 else None)
    return bounds[0], bounds[1]


# --- The excitation layers -----------------------------------------------------------------------


def match_layer(value: ir.Value, stage: Stage = Stage.EXCITATION) -> ExcitationLayer:
    """Pattern: Conv 1×1 | Gemm | MatMul, each with an optional bias Add after it.

    The weight must be constant; it is normalized to out × in, with Gemm's alpha/beta, the layer's
    own bias and the separate Add's bias all folded into one bias vector.
    """
    node = real_producer(value)
    bias_add = None
    extra_bias = None
    if node is not None and node.op_type == "Add" and node.domain == "":
        split = _split_constant_operand(node)
        if split is not None:
            operand, extra_bias = split
            bias_add, node = node, real_producer(operand)
    if node is None or node.op_type not in _LAYER_OPS or node.domain != "":
        found = "a graph input" if node is None else node.op_type
        raise Mismatch(stage, f"expected a 1×1 Conv, Gemm or MatMul excitation layer, found {found}")
    if node.op_type == "Conv":
        weight, bias, spatial_rank = _conv_layer(node, stage)
    elif node.op_type == "Gemm":
        weight, bias, spatial_rank = (*_gemm_layer(node, stage), None)
    else:
        weight, bias, spatial_rank = (*_matmul_layer(node, stage), None)
    if extra_bias is not None:
        bias = bias + _per_channel(extra_bias, weight.shape[0], spatial_rank or 0, stage)
    nodes = (node,) if bias_add is None else (node, bias_add)
    return ExcitationLayer(node.op_type, LayerWeights(weight, bias), nodes, spatial_rank)


def _conv_layer(node: ir.Node, stage: Stage) -> tuple[np.ndarray, np.ndarray, int]:
    weight = constant_array(node.inputs[1])
    if weight is None:
        raise Mismatch(stage, f"Conv {node.name!r} has a weight that is not constant")
    if weight.ndim < 3 or any(d != 1 for d in weight.shape[2:]):
        raise Mismatch(stage, f"Conv {node.name!r} has kernel {weight.shape[2:]}, not 1×1")
    if int_attribute(node, "group", 1) != 1:
        raise Mismatch(stage, f"Conv {node.name!r} is a grouped conv")
    spatial_rank = weight.ndim - 2
    if any(s != 1 for s in ints_attribute(node, "strides", [1] * spatial_rank)) or any(
        p != 0 for p in ints_attribute(node, "pads", [0] * 2 * spatial_rank)
    ):
        raise Mismatch(stage, f"Conv {node.name!r} has strides or pads")
    if node.attributes.get("auto_pad") is not None and node.attributes["auto_pad"].value not in ("NOTSET", "VALID"):
        raise Mismatch(stage, f"Conv {node.name!r} pads its input")
    out_features = weight.shape[0]
    bias = _optional_constant(node, 2, stage)
    return (
        weight.reshape(out_features, weight.shape[1]).astype(np.float32),
        np.zeros(out_features, np.float32) if bias is None else bias.reshape(out_features).astype(np.float32),
        spatial_rank,
    )


def _gemm_layer(node: ir.Node, stage: Stage) -> tuple[np.ndarray, np.ndarray]:
    weight = constant_array(node.inputs[1])
    if weight is None or weight.ndim != 2:
        raise Mismatch(stage, f"Gemm {node.name!r} has a weight that is not a constant matrix")
    if int_attribute(node, "transA", 0):
        raise Mismatch(stage, f"Gemm {node.name!r} transposes its input")
    weight = weight.astype(np.float32) * float_attribute(node, "alpha", 1.0)
    if not int_attribute(node, "transB", 0):
        weight = weight.T
    bias = _optional_constant(node, 2, stage)
    if bias is None:
        return weight, np.zeros(weight.shape[0], np.float32)
    beta = float_attribute(node, "beta", 1.0)
    return weight, _per_channel(bias, weight.shape[0], 0, stage) * beta


def _matmul_layer(node: ir.Node, stage: Stage) -> tuple[np.ndarray, np.ndarray]:
    weight = constant_array(node.inputs[1])
    if weight is None or weight.ndim != 2:
        raise Mismatch(stage, f"MatMul {node.name!r} has a right operand that is not a constant matrix")
    weight = weight.astype(np.float32).T
    return weight, np.zeros(weight.shape[0], np.float32)


def _optional_constant(node: ir.Node, index: int, stage: Stage) -> np.ndarray | None:
    operand = node.inputs[index] if len(node.inputs) > index else None
    if operand is None:
        return None
    array = constant_array(operand)
    if array is None:
        raise Mismatch(stage, f"{node.op_type} {node.name!r} has a bias that is not constant")
    return array


def _per_channel(array: np.ndarray, channels: int, trailing_unit_dims: int, stage: Stage) -> np.ndarray:
    """A bias as a length-`channels` vector, if it broadcasts per channel over the layer's output
    (N × C for a linear layer, N × C × 1… for a 1×1 conv with `trailing_unit_dims` spatial dims)."""
    shape = list(array.shape)
    while shape and shape[0] == 1 and len(shape) > trailing_unit_dims + 1:
        shape.pop(0)
    if array.size == 1:
        return np.full(channels, float(array.reshape(())), np.float32)
    if shape != [channels] + [1] * trailing_unit_dims:
        raise Mismatch(stage, f"bias of shape {array.shape} is not per-channel over {channels} channels")
    return array.reshape(channels).astype(np.float32)


# --- The activation between the layers -----------------------------------------------------------


def match_activation(value: ir.Value) -> tuple[Activation | None, tuple[ir.Node, ...], ir.Value]:
    """Pattern: Relu | LeakyRelu | PRelu | HardSwish | h·Sigmoid(h) (SiLU) | h·HardSigmoid(h)
    (HardSwish before opset 14), or nothing when the
    value comes straight from the squeeze (the one-layer "effective SE" variant). A Q/DQ pair that
    clips at zero right after the first layer is its Relu (ONNX Runtime's quantizer folds it so)."""
    node = real_producer(value)
    if node is None or node.domain != "":
        raise Mismatch(Stage.ACTIVATION, "the excitation layer's input is not computed in the graph")
    if node.op_type in ("Relu", "HardSwish"):
        return Activation(node.op_type), (node,), required_input(node)
    if node.op_type == "LeakyRelu":
        return Activation("LeakyRelu", alpha=float_attribute(node, "alpha", 0.01)), (node,), required_input(node)
    if node.op_type == "PRelu":
        slope = constant_array(node.inputs[1])
        if slope is None:
            raise Mismatch(Stage.ACTIVATION, f"PRelu {node.name!r} has a slope that is not constant")
        return Activation("PRelu", slope=_prelu_slope(slope)), (node,), required_input(node)
    if node.op_type in ("Mul", "Div"):
        return _match_written_out_swish(node)
    if node.op_type in (*_LAYER_OPS, "Add") and clips_at_zero(through_no_ops(value)):
        return Activation("Relu"), (), value
    if node.op_type in (*_LAYER_OPS, "Add") or _is_squeeze_node(node):
        return None, (), value
    raise Mismatch(Stage.ACTIVATION, f"unsupported activation {node.op_type} between the excitation layers")


def _match_written_out_swish(node: ir.Node) -> tuple[Activation, tuple[ir.Node, ...], ir.Value]:
    """h·Sigmoid(h) is SiLU; h·HardSigmoid(h; 1/6, 0.5) is HardSwish as written before opset 14,
    and so are h·(ReLU6(h + 3)/6) (the h_swish of MobileNetV3's and coordinate attention's code)
    and (h·ReLU6(h + 3))/6 (timm's hard_swish), ReLU6 as `_clip` reads it."""
    if (scaled := _scale_operand(node)) is not None:
        product = real_producer(scaled[0])
        if product is not None and product.op_type == "Mul" and product.domain == "":
            swish = _hard_swish(product, lambda clipped: _hard_sigmoid(clipped, scaled[1], ()))
            if swish is not None:
                return Activation("HardSwish"), (*swish[0], product, node), swish[1]
    elif node.op_type == "Mul":
        for index in (0, 1):
            hidden, other = node.inputs[index], node.inputs[1 - index]
            gate = real_producer(other) if other is not None else None
            # The op type first: a gate candidate may be a node without inputs (a Constant).
            if (
                hidden is None
                or gate is None
                or gate.op_type != "Sigmoid"
                or gate.domain != ""
                or underlying(required_input(gate)) is not underlying(hidden)
            ):
                continue
            return Activation("SiLU"), (gate, node), hidden
        swish = _hard_swish(node, match_gate)
        if swish is not None:
            return Activation("HardSwish"), (*swish[0], node), swish[1]
    raise Mismatch(
        Stage.ACTIVATION, f"{node.op_type} between the excitation layers is not h·Sigmoid(h) or a hard swish"
    )


def _hard_swish(
    mul: ir.Node, hard_sigmoid: Callable[[ir.Value], tuple[Gate, tuple[ir.Node, ...], ir.Value]]
) -> tuple[tuple[ir.Node, ...], ir.Value] | None:
    """Whether one operand h of `mul` times the other, `hard_sigmoid` of h, is HardSwish's
    HardSigmoid(h; 1/6, 0.5) (no gain): (the hard sigmoid's nodes, h), else None."""
    for index in (0, 1):
        hidden, other = mul.inputs[index], mul.inputs[1 - index]
        if hidden is None or other is None or is_constant(hidden) or is_constant(other):
            continue
        try:
            gate, nodes, source = hard_sigmoid(other)
        except Mismatch:
            continue
        if (
            gate.alpha is not None
            and gate.beta is not None
            and gate.gain == 1
            and underlying(source) is underlying(hidden)
            and np.allclose([gate.alpha, gate.beta], [1 / 6, 0.5], rtol=_CONSTANT_RTOL)
        ):
            return nodes, hidden
    return None


def _prelu_slope(slope: np.ndarray) -> np.ndarray:
    """PRelu's slope in the shape the canonical block's N × S activation broadcasts it over."""
    if slope.size == 1:
        return slope.reshape(1).astype(np.float32)
    return slope.reshape(-1).astype(np.float32)


# --- The squeeze ---------------------------------------------------------------------------------


def _is_squeeze_node(node: ir.Node) -> bool:
    return node.op_type in ("GlobalAveragePool", "ReduceMean", *_SQUEEZE_FLATTEN_OPS)


def _match_squeeze(value: ir.Value, x: ir.Value) -> Squeeze:
    """Pattern: GlobalAveragePool(x) | ReduceMean(x) over every spatial axis (axes as attribute or
    input, keepdims 0 or 1), then any Flatten/Reshape/Squeeze; x must be the rescaled tensor."""
    nodes: list[ir.Node] = []
    node = real_producer(value)
    while node is not None and node.op_type in _SQUEEZE_FLATTEN_OPS and node.domain == "":
        nodes.insert(0, node)
        node = real_producer(required_input(node))
    if node is None or node.op_type not in ("GlobalAveragePool", "ReduceMean") or node.domain != "":
        found = "a graph input" if node is None else node.op_type
        raise Mismatch(Stage.SQUEEZE, f"the first excitation layer does not read a global spatial mean (found {found})")
    if not same_rounding(required_input(node), x):
        raise Mismatch(Stage.SQUEEZE, "the squeezed tensor is not the one the Mul rescales")
    spatial_rank, channels_last = None, False
    if node.op_type == "ReduceMean":
        spatial_rank, channels_last = _reduce_mean_spatial_axes(node, x)
    keeps_dims = not nodes and (node.op_type == "GlobalAveragePool" or int_attribute(node, "keepdims", 1) == 1)
    return Squeeze(node.op_type, (node, *nodes), spatial_rank, channels_last, keeps_dims)


def same_rounding(value: ir.Value, x: ir.Value) -> bool:
    """`value` is `x` (up to no-ops), or another DequantizeLinear of the same tensor with the same
    scale and zero point (ONNX Runtime's quantizer gives each consumer its own pair when asked to)."""
    if underlying(value) is not underlying(x):
        return False
    value, x = through_no_ops(value), through_no_ops(x)
    if value is x:
        return True
    mine, theirs = value.producer(), x.producer()
    return mine is not None and theirs is not None and list(mine.inputs[1:]) == list(theirs.inputs[1:])


def _reduce_mean_spatial_axes(node: ir.Node, x: ir.Value) -> tuple[int | None, bool]:
    """Check that ReduceMean averages exactly the spatial axes, 2…rank-1 (channels first) or
    1…rank-2 (channels last); return the spatial rank when the axes tell it, and whether the
    channels are last. LayerNorm/GroupNorm/RMSNorm means fail here (they reduce other axes)."""
    if "axes" in node.attributes:
        axes = ints_attribute(node, "axes", [])
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        if array is None:
            raise Mismatch(Stage.SQUEEZE, f"ReduceMean {node.name!r} has axes that are not constant")
        axes = [int(axis) for axis in array.reshape(-1)]
    else:
        axes = []
    if not axes:
        raise Mismatch(Stage.SQUEEZE, f"ReduceMean {node.name!r} averages every axis, not the spatial ones")
    rank = _static_rank(x)
    if rank is not None:
        axes = [axis % rank for axis in axes]
    if any(axis < 0 for axis in axes):
        # Negative axes with an unknown rank: spatial if they are the trailing ones, -1…-k.
        if sorted(axes) != list(range(-len(axes), 0)):
            raise Mismatch(Stage.SQUEEZE, f"ReduceMean {node.name!r} averages axes {axes}, not the spatial ones")
        return None, False
    spatial = sorted(axes)
    first = spatial[0]
    if (
        first not in (1, 2)
        or spatial != list(range(first, first + len(spatial)))
        or (rank is not None and len(spatial) != rank - 2)
    ):
        raise Mismatch(Stage.SQUEEZE, f"ReduceMean {node.name!r} averages axes {axes}, not the spatial ones")
    return len(spatial), first == 1


# --- Whole-block checks --------------------------------------------------------------------------


def _check_widths(layers: tuple[ExcitationLayer, ...], x: ir.Value, channels_last: bool) -> None:
    channels = layers[0].in_features
    if layers[-1].out_features != channels:
        raise Mismatch(Stage.BLOCK, f"the excitation maps {channels} channels to {layers[-1].out_features}")
    if len(layers) == 2 and layers[1].in_features != layers[0].out_features:
        raise Mismatch(Stage.BLOCK, "the two excitation layers' widths do not chain")
    if x.shape is not None and len(x.shape) > 1:
        found = x.shape[-1 if channels_last else 1]
        if isinstance(found, int) and found != channels:
            raise Mismatch(Stage.BLOCK, f"the feature map has {found} channels, the excitation {channels}")


def _check_channels_last_broadcast(
    squeeze: Squeeze, broadcast_nodes: tuple[ir.Node, ...], channels: int, spatial_rank: int
) -> None:
    """An N×spatial×C map needs its gate as N×1…×C: kept by the squeeze, or restored by an
    Unsqueeze of axes 1…rank-2 or a Reshape to (N, 1…, C). An N×C gate would broadcast C over W."""
    unit_axes = list(range(1, 1 + spatial_rank))
    if not broadcast_nodes:
        if squeeze.keeps_dims:
            return
        raise Mismatch(Stage.BLOCK, "the N×C gate is not broadcast back over the channels-last feature map")
    last = broadcast_nodes[-1]
    if last.op_type == "Reshape":
        target = constant_array(last.inputs[1])
        if target is not None and list(target[1:-1]) == [1] * spatial_rank and int(target[-1]) in (channels, -1):
            return
    elif len(broadcast_nodes) == 1:
        axes = ints_attribute(last, "axes", []) if "axes" in last.attributes else None
        if axes is None and len(last.inputs) > 1:
            array = constant_array(last.inputs[1])
            axes = None if array is None else [int(a) for a in array.reshape(-1)]
        if axes == unit_axes:
            return
    raise Mismatch(
        Stage.BLOCK, f"the gate is not reshaped to N×{'1×' * spatial_rank}C for the channels-last feature map"
    )


def _spatial_rank(
    x: ir.Value, squeeze: Squeeze, layers: tuple[ExcitationLayer, ...], broadcast_nodes: tuple[ir.Node, ...]
) -> int:
    """The feature map's spatial rank, from its shape or else from the block's own constants."""
    rank = _static_rank(x)
    clues = [] if rank is None else [rank - 2]
    clues += [layer.spatial_rank for layer in layers if layer.spatial_rank is not None]
    if squeeze.spatial_rank is not None:
        clues.append(squeeze.spatial_rank)
    clues += _broadcast_spatial_ranks(broadcast_nodes)
    if not clues:
        raise Mismatch(Stage.BLOCK, "the feature map's rank is unknown; run shape inference on the model first")
    if len(set(clues)) != 1 or clues[0] < 1:
        raise Mismatch(Stage.BLOCK, f"the block's shapes disagree on the feature map's spatial rank ({clues})")
    return clues[0]


def _broadcast_spatial_ranks(broadcast_nodes: tuple[ir.Node, ...]) -> list[int]:
    if not broadcast_nodes:
        return []
    last = broadcast_nodes[-1]
    if last.op_type == "Reshape":
        target = constant_array(last.inputs[1])
        return [] if target is None else [target.size - 2]
    # A chain of Unsqueezes from N × C restores every spatial dim.
    added = 0
    for node in broadcast_nodes:
        if node.op_type != "Unsqueeze":
            return []
        axes = ints_attribute(node, "axes", []) if "axes" in node.attributes else None
        if axes is None:
            array = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            if array is None:
                return []
            axes = list(array.reshape(-1))
        added += len(axes)
    return [added]


def check_private(nodes: tuple[ir.Node, ...], mul: ir.Node) -> None:
    """Every value inside the block must be used only inside it, so it can be rewritten or removed."""
    members = set(nodes)
    for node in nodes:
        if node.graph is not mul.graph:
            raise Mismatch(
                Stage.BLOCK, f"{node.name!r} sits in another graph than the rescale (across an If/Loop boundary)"
            )
        if node is mul:
            continue
        for output in node.outputs:
            if output.is_graph_output() or any(user not in members for user in output.consumers()):
                raise Mismatch(Stage.BLOCK, f"{output.name!r} inside the block is also used outside it")


def _layer_nodes(layer: ExcitationLayer) -> tuple[ir.Node, ...]:
    return layer.nodes


def _dtype(x: ir.Value, layer: ExcitationLayer) -> ir.DataType:
    dtype = value_dtype(x) or value_dtype(layer.nodes[0].inputs[1])
    assert dtype is not None  # the layer matcher checked the weight is constant
    return dtype


# --- Operands -----------------------------------------------------------------------------------


def real_producer(value: ir.Value) -> ir.Node | None:
    """The node that computes `value`, seen through no-ops and the Q/DQ pairs that round it."""
    return underlying(value).producer()


def _split_constant_operand(node: ir.Node) -> tuple[ir.Value, np.ndarray] | None:
    """(variable operand, constant operand) of a binary node, constant on either side; None when
    neither operand is a constant."""
    if len(node.inputs) != 2:
        return None
    first, second = node.inputs
    if first is None or second is None:
        return None
    for operand, constant in ((first, second), (second, first)):
        array = constant_array(constant)
        if array is not None:
            return operand, array
    return None


def _static_rank(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)
