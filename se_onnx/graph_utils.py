"""The graph walks every pass shares: opset, every graph to any depth, producers, consumers,
rewiring uses, a conv layer's extent, node labels and attributes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from se_onnx.constants import is_constant
from se_onnx.errors import SeOnnxError
from se_onnx.naming import NameScope
from se_onnx.se_block import MIN_OPSET

MAIN_GRAPH = "main"
# Elementwise activations that a conv layer's output may pass through before an SE block.
ACTIVATIONS = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "HardSwish", "HardSigmoid",
        "Sigmoid", "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu",
    }
)


# --- The model ----------------------------------------------------------------------------------


def model_opset(model: ir.Model) -> int:
    """The model's default-domain opset, refusing one older than se-onnx supports."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        raise SeOnnxError("the model imports no default-domain (ai.onnx) opset")
    if opset < MIN_OPSET:
        raise SeOnnxError(
            f"the model's opset {opset} is older than {MIN_OPSET}; convert it first "
            "(onnx.version_converter.convert_version)"
        )
    return opset


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


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    """Whether `node` is one of the default-domain `op_types`."""
    return node is not None and node.op_type in op_types and node.domain in ("", "ai.onnx")


def is_conv(node: ir.Node | None) -> bool:
    return is_op(node, "Conv")


def node_label(node: ir.Node) -> str:
    """How messages and reports name a node: its name, else its first output's."""
    return node.name or (node.outputs[0].name if node.outputs else "") or node.op_type


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


# --- Conv layers: conv → bias Add → BatchNorm → activation -------------------------------------


def conv_layer_output(conv: ir.Node) -> ir.Value:
    """Where a conv layer ends: past a separate bias Add, a BatchNorm and an activation (or
    x·Sigmoid(x)) that only it feeds, so that Conv+BN+activation fusions survive an SE block after it."""
    value = conv.outputs[0]
    value = bias_add_output(value) or value
    consumer = sole_consumer(value)
    if is_op(consumer, "BatchNormalization") and consumer.inputs[0] is value:
        value = consumer.outputs[0]
        consumer = sole_consumer(value)
    if consumer is not None and is_op(consumer, *ACTIVATIONS) and consumer.inputs[0] is value:
        return consumer.outputs[0]
    return silu_output(value) or value


def conv_before(value: ir.Value) -> ir.Node | None:
    """The conv whose layer ends in `value` (the inverse of `conv_layer_output`), or None.

    An SE block is keyed by this conv's name, so weights exported from one model find their place
    in another.
    """
    node = producer(value)
    if is_op(node, "Mul"):
        x = next((v for v in node.inputs if v is not None and silu_output(v) is node.outputs[0]), None)
        node = producer(x)
    elif node is not None and is_op(node, *ACTIVATIONS):
        node = producer(node.inputs[0])
    if is_op(node, "BatchNormalization"):
        node = producer(node.inputs[0])
    return _past_bias_add(node)


def conv_behind(value: ir.Value) -> ir.Node | None:
    """The conv that produces `value`, directly or through its BatchNorm and a separate bias Add."""
    node = producer(value)
    if is_op(node, "BatchNormalization"):
        node = producer(node.inputs[0])
    return _past_bias_add(node)


def bias_add_output(value: ir.Value) -> ir.Value | None:
    """The output of value + constant when that Add is all `value` feeds: a conv bias written as
    its own node (Paddle2ONNX writes every conv bias so)."""
    add = sole_consumer(value)
    if not is_op(add, "Add") or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is value else add.inputs[0]
    return add.outputs[0] if is_constant(other) else None


def _past_bias_add(node: ir.Node | None) -> ir.Node | None:
    """`node` when it is a conv, or the conv behind it when it is that conv's separate bias Add."""
    if is_op(node, "Add"):
        conv = next((producer(v, "Conv") for v in node.inputs if v is not None and producer(v, "Conv")), None)
        if conv is not None and bias_add_output(conv.outputs[0]) is node.outputs[0]:
            return conv
    return node if is_conv(node) else None


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
