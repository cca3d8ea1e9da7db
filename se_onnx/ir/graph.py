"""The graph walks every pass shares: every graph to any depth, producers, consumers,
rewiring uses, no-ops, a conv layer's extent, node labels and attributes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TypeGuard, overload

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from se_onnx.errors import SeOnnxError
from se_onnx.ir.constants import (
    constant_array,
    is_constant,
    is_quantize_op,
    static_shape,
    value_dtype,
)
from se_onnx.ir.naming import NameScope
from se_onnx.ir.qdq import qdq_pair_before, through_qdq

MAIN_GRAPH = "main"
# Elementwise activations that a conv layer's output may pass through before an SE block.
ACTIVATIONS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Clip",
        "HardSwish",
        "HardSigmoid",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "Softsign",
        "Gelu",
        "Mish",
        "Swish",
        "ThresholdedRelu",
    }
)
# How many nodes (a Transpose, BatchNorm or its Mul and Add, Q/DQ pairs) a conv layer spans at most.
_LAYER_STEP_LIMIT = 16


# --- The model ----------------------------------------------------------------------------------


def graphs(model: ir.Model) -> Iterator[tuple[ir.Graph, str]]:
    """The main graph and every If/Loop/Scan body in it, to any depth, each with its path:
    "main", then "main/<node>.<attribute>" one level per subgraph (a list of graphs adds "[i]")."""

    def walk(graph: ir.Graph, path: str) -> Iterator[tuple[ir.Graph, str]]:
        yield graph, path
        for node in graph:
            for attribute in node.attributes.values():
                if attribute.type == ir.AttributeType.GRAPH and not attribute.is_ref():
                    yield from walk(attribute.value, f"{path}/{node_label(node)}.{attribute.name}")
                elif attribute.type == ir.AttributeType.GRAPHS and not attribute.is_ref():
                    for index, subgraph in enumerate(attribute.value):
                        yield from walk(subgraph, f"{path}/{node_label(node)}.{attribute.name}[{index}]")

    return walk(model.graph, MAIN_GRAPH)


def scoped_name(label: str, path: str) -> str:
    """A node's label made unique across the model: a subgraph's path goes before it (the two
    branches of an If often reuse names); the main graph's labels stay as they are."""
    return label if path == MAIN_GRAPH else f"{path.removeprefix(MAIN_GRAPH + '/')}/{label}"


def graph_paths(model: ir.Model) -> dict[ir.Graph, str]:
    """Each graph of the model (see `graphs`) to its path."""
    return dict(graphs(model))


def owning_graph(value: ir.Value) -> ir.Graph:
    """The graph that defines `value` (its producer's, or the one it is an input or initializer of)."""
    graph = value.graph
    if graph is None:
        raise ValueError(f"value {value.name!r} belongs to no graph")
    return graph


def remove_unused(model: ir.Model) -> None:
    """Drop nodes and initializers nothing reads, in the main graph and every subgraph (onnx-ir's
    pass leaves a subgraph's initializers)."""
    RemoveUnusedNodesPass()(model)
    for graph, _ in graphs(model):
        if graph is model.graph:
            continue
        for name, initializer in list(graph.initializers.items()):
            if not initializer.uses() and not initializer.is_graph_output() and not initializer.is_graph_input():
                del graph.initializers[name]


# --- Nodes and values ---------------------------------------------------------------------------


def is_op(node: ir.Node | None, *op_types: str) -> TypeGuard[ir.Node]:
    """Whether `node` is one of the default-domain `op_types`."""
    return node is not None and node.op_type in op_types and node.domain in ("", "ai.onnx")


def is_conv(node: ir.Node | None) -> TypeGuard[ir.Node]:
    return is_op(node, "Conv")


def node_label(node: ir.Node) -> str:
    """How messages and reports name a node: its name, else its first output's."""
    return node.name or (node.outputs[0].name if node.outputs else "") or node.op_type


def required_input(node: ir.Node, index: int = 0) -> ir.Value:
    """Input `index` of `node`, one its operator requires (onnx-ir gives a missing input as None)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        raise SeOnnxError(f"{node.op_type} {node_label(node)!r} lacks its required input {index}: not a valid model")
    return value


def value_name(value: ir.Value) -> str:
    """The name of `value`: graph inputs, outputs, constants and node outputs of a model read from
    a file all have one (onnx-ir gives a missing name as None)."""
    if value.name is None:
        producer = value.producer()
        where = f" of {producer.op_type} {node_label(producer)!r}" if producer is not None else ""
        raise SeOnnxError(f"a value{where} has no name: not a valid model")
    return value.name


def producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The node that computes `value` when it is one of the default-domain `op_types` (any node
    when none are given), else None."""
    node = value.producer() if value is not None else None
    if node is None or (op_types and not is_op(node, *op_types)):
        return None
    return node


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The one node that reads `value`, when nothing else does (a graph output counts as a reader)."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return next(iter(uses)).node


def redirect(output: ir.Value, replacement: ir.Value, names: NameScope) -> None:
    """Make every reader of `output` read `replacement`, in whichever graph they sit. A graph
    output keeps its name: a fresh `replacement` (made by a rewrite, used nowhere yet) takes it
    over, and any other value is passed through an Identity that does, so the signature of the
    model (or of the If/Loop body) does not change."""
    if not output.is_graph_output():
        output.replace_all_uses_with(replacement)
        return
    graph = owning_graph(output)
    used = replacement.uses() or replacement.is_graph_input() or replacement.is_graph_output()
    if not (used or replacement.is_initializer()) and replacement.graph is graph:
        kept = replacement
    else:
        identity = ir.node("Identity", [replacement], name=names("se_identity"), num_outputs=1)
        graph.append(identity)
        kept = identity.outputs[0]
    name, kept.type, kept.shape = output.name, output.type, output.shape
    output.replace_all_uses_with(kept, replace_graph_outputs=True)
    output.name = names(f"{name}_replaced")
    kept.name = name


# --- No-ops: nodes that pass their input through unchanged ---------------------------------------


def is_no_op(node: ir.Node | None) -> TypeGuard[ir.Node]:
    """Whether `node` passes its first input through unchanged: an Identity, a Dropout in inference
    (its mask unread, no training mode), a Cast to the type the value has, a Reshape to the shape it
    has. Exporters leave them around layers (Paddle2ONNX writes an Identity after each Add and Mul);
    every walk sees through them, and only a rewrite of the block they sit in removes them."""
    if not is_op(node, "Identity", "Dropout", "Cast", "Reshape") or not node.inputs or node.inputs[0] is None:
        return False
    data = node.inputs[0]
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        mask = node.outputs[1] if len(node.outputs) > 1 else None
        if mask is not None and (mask.uses() or mask.is_graph_output()):
            return False
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is None:
            return True
        mode = constant_array(training)
        return mode is not None and mode.size == 1 and not bool(mode.reshape(()))
    if node.op_type == "Cast":
        dtype = value_dtype(data)
        return dtype is not None and node.attributes.get_int("to", 0) == dtype.value
    return _keeps_its_shape(node, data)


def _keeps_its_shape(reshape: ir.Node, data: ir.Value) -> bool:
    """Whether a Reshape's constant target is `data`'s own shape: each dim equal, copied (0 without
    allowzero), or the one inferred (-1) when every other dim stays."""
    target = constant_array(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if target is None or data.shape is None or target.ndim != 1 or len(target) != len(data.shape):
        return False
    copies_zeros = not reshape.attributes.get_int("allowzero", 0)
    inferred = 0
    for wanted, dim in zip(target.tolist(), data.shape):
        if wanted == -1:
            inferred += 1
        elif not ((wanted == 0 and copies_zeros) or (isinstance(dim, int) and dim == wanted)):
            return False
    return inferred <= 1


def through_no_ops(value: ir.Value) -> ir.Value:
    """The value the no-ops ending in `value` pass through (`value` itself when none)."""
    while is_no_op(producer := value.producer()):
        value = required_input(producer)
    return value


def past_no_ops(value: ir.Value) -> ir.Value:
    """The output of the chain of no-ops that read `value`, each the only reader of the one before
    (`value` itself when its reader is no no-op)."""
    while is_no_op(consumer := sole_consumer(value)) and consumer.inputs[0] is value:
        value = consumer.outputs[0]
    return value


def underlying(value: ir.Value) -> ir.Value:
    """The value `value` is, seen back through no-ops and the Q/DQ pairs that round it."""
    while (source := through_no_ops(through_qdq(value))) is not value:
        value = source
    return value


def pass_throughs_between(value: ir.Value, source: ir.Value) -> list[ir.Node]:
    """The no-ops and Q/DQ pairs that end in `value`, in graph order, stopping at `source`."""
    nodes: list[ir.Node] = []
    while value is not source:
        producer = value.producer()
        if is_no_op(producer):
            nodes.append(producer)
            value = required_input(producer)
        elif (pair := qdq_pair_before(value)) is not None:
            nodes += reversed(pair)
            value = required_input(pair[0])
        else:
            break
    return nodes[::-1]


# --- Conv layers: conv → Transpose → BatchNorm → activation, through Q/DQ pairs ------------------


@dataclasses.dataclass(frozen=True)
class LayerPath:
    """How far a conv's layer reaches: the value it ends in, the ops it passed, its layout there,
    and the Q/DQ pair that value comes out of (in a QDQ model)."""

    end: ir.Value
    through: tuple[str, ...]
    channels_last: bool
    quantized: tuple[ir.Node, ir.Node] | None

    @property
    def activated(self) -> bool:
        """Whether the layer ends in its activation."""
        return any(op == "SiLU" or op in ACTIVATIONS for op in self.through)


def follow_layer(conv: ir.Node, *, activation: bool) -> LayerPath:
    """Follow a conv's output through what belongs to its layer, each step the value's only reader:
    a Transpose to channels-last (tf2onnx's NHWC islands), BatchNorm (a node, or Mul/Add by a
    per-channel constant), Q/DQ pairs, and with `activation` one activation (or x·Sigmoid(x), then
    a Q/DQ pair) to end the walk; no-ops (`is_no_op`) anywhere along it, the activation's included,
    are passed and not reported. Where a step has two readers the layer ends there: at worst right
    after the conv."""
    value = conv.outputs[0]
    weight_shape = static_shape(conv.inputs[1]) if len(conv.inputs) > 1 else None
    spatial_rank = len(weight_shape) - 2 if weight_shape else len(conv.attributes.get_ints("kernel_shape", [0, 0]))
    through: list[str] = []
    channels_last = False
    quantized = None
    for _ in range(_LAYER_STEP_LIMIT):
        if activation and (silu := silu_output(value)) is not None:
            value, activation = silu, False
            through.append("SiLU")
            quantized = None
            continue
        consumer = sole_consumer(value)
        if consumer is None or consumer.inputs[0] is None:
            break
        op = consumer.op_type
        if is_no_op(consumer) and consumer.inputs[0] is value:
            value = consumer.outputs[0]
            continue
        if (
            is_quantize_op(consumer, "QuantizeLinear")
            and (dequantize := sole_consumer(consumer.outputs[0])) is not None
        ):
            if not is_quantize_op(dequantize, "DequantizeLinear"):
                break
            value, quantized = dequantize.outputs[0], (consumer, dequantize)
            through.append("Q/DQ")
            continue
        if activation and op in ACTIVATIONS and consumer.inputs[0] is value:
            activation = False
        elif op == "Transpose" and not channels_last and _to_channels_last(consumer, spatial_rank):
            channels_last = True
        elif (op == "BatchNormalization" and not channels_last and consumer.inputs[0] is value) or (
            op in ("Mul", "Add") and _per_channel_operand(consumer, value, weight_shape, channels_last)
        ):
            pass
        else:
            break
        value, quantized = consumer.outputs[0], None
        through.append(op)
        if not activation and op in ACTIVATIONS:
            # One Q/DQ pair may still follow the activation; nothing else belongs to the layer.
            value = past_no_ops(value)
            if (pair := _qdq_after(value)) is not None:
                value, quantized = past_no_ops(pair[1].outputs[0]), pair
                through.append("Q/DQ")
            break
    return LayerPath(value, tuple(through), channels_last, quantized)


def _qdq_after(value: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    quantize = sole_consumer(value)
    if not is_quantize_op(quantize, "QuantizeLinear"):
        return None
    dequantize = sole_consumer(quantize.outputs[0])
    return (quantize, dequantize) if is_quantize_op(dequantize, "DequantizeLinear") else None


def _to_channels_last(transpose: ir.Node, spatial_rank: int) -> bool:
    perm = transpose.attributes.get_ints("perm", None)
    return perm is not None and list(perm) == [0, *range(2, 2 + spatial_rank), 1]


def _per_channel_operand(
    node: ir.Node, value: ir.Value, weight_shape: tuple[int, ...] | None, channels_last: bool
) -> bool:
    """Whether `node` is value·k or value + k with k a constant of C values on the channel axis of
    the conv with weight `weight_shape`: BatchNorm as exporters decompose it, or a bias Add kept
    apart from its conv. (A scalar is not: it is more often the model's own output scaling.)"""
    if weight_shape is None or len(node.inputs) != 2 or value not in node.inputs or node.inputs[0] is node.inputs[1]:
        return False
    array = constant_array(node.inputs[1] if node.inputs[0] is value else node.inputs[0])
    if array is None or array.ndim > len(weight_shape):
        return False
    shape = list(array.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    channels, spatial_rank = weight_shape[0], len(weight_shape) - 2
    return shape == ([channels] if channels_last else [channels, *([1] * spatial_rank)])


def conv_before(value: ir.Value) -> ir.Node | None:
    """The conv whose layer ends in `value` (the inverse of `follow_layer`), or None.

    Walks back through an activation (or x·Sigmoid(x)), then through what `follow_layer` follows
    (BatchNorm as a node or as Mul/Add by a constant, Transposes, Q/DQ pairs, no-ops); an SE block
    is keyed by this conv's name, so weights exported from one model find their place in another.
    """
    value = underlying(value)
    producer = value.producer()
    source: ir.Value | None = value
    if producer is not None and producer.op_type == "Mul" and (x := _silu_input(producer)) is not None:
        source = x
    elif producer is not None and producer.op_type in ACTIVATIONS:
        source = producer.inputs[0]
    return _conv_behind(source)


def _conv_behind(value: ir.Value | None) -> ir.Node | None:
    """The conv that produces `value`, directly or through BatchNorm, Transposes, Q/DQ pairs and no-ops."""
    for _ in range(_LAYER_STEP_LIMIT):
        producer = underlying(value).producer() if value is not None else None
        if producer is None:
            return None
        if is_conv(producer):
            return producer
        if producer.op_type in ("BatchNormalization", "Transpose"):
            value = producer.inputs[0]
        elif producer.op_type in ("Mul", "Add") and len(producer.inputs) == 2:
            constants = [is_constant(operand) for operand in producer.inputs]
            if constants.count(True) != 1:
                return None
            value = producer.inputs[constants.index(False)]
        else:
            return None
    return None


def _silu_input(mul: ir.Node) -> ir.Value | None:
    return next((v for v in mul.inputs if v is not None and silu_output(v) is mul.outputs[0]), None)


def silu_output(value: ir.Value) -> ir.Value | None:
    """The output of x·Sigmoid(x) when that is all `value` feeds (SiLU as exporters write it)."""
    consumers = {node.op_type: node for node in value.consumers()}
    if len(value.uses()) != 2 or set(consumers) != {"Sigmoid", "Mul"}:
        return None
    sigmoid, mul = consumers["Sigmoid"], consumers["Mul"]
    if set(mul.inputs) == {value, sigmoid.outputs[0]} and len(sigmoid.outputs[0].uses()) == 1:
        return mul.outputs[0]
    return None


# --- Attributes ---------------------------------------------------------------------------------


@overload
def float_attribute(node: ir.Node, name: str, default: float) -> float: ...
@overload
def float_attribute(node: ir.Node, name: str, default: None) -> float | None: ...
def float_attribute(node: ir.Node, name: str, default: float | None) -> float | None:
    """The attribute's value; a default as the float32 an explicit attribute would hold, so that
    HardSigmoid() and HardSigmoid(alpha=0.2) read the same."""
    attribute = node.attributes.get(name)
    if attribute is None:
        return None if default is None else float(np.float32(default))
    return float(attribute.value)


def int_attribute(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return default if attribute is None else int(attribute.value)


def ints_attribute(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attribute = node.attributes.get(name)
    return list(default) if attribute is None else [int(v) for v in attribute.value]
