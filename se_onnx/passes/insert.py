"""The insertion pass: adds SE blocks after chosen conv layers of a model.

Placement follows SENet: on each residual branch, after the branch's last conv (and its
BatchNorm), before the residual Add; or after every conv, past its BatchNorm and activation so
that Conv+BN+activation fusions survive; or after convs chosen by name.

A conv's layer is followed the way exporters write it (`follow_layer`): through a Transpose to
channels-last (tf2onnx runs BatchNorm, activations and residual Adds in NHWC between Transposes
around each Conv), BatchNorm as a node or as Mul + Add by per-channel constants, and the
QuantizeLinear → DequantizeLinear pairs of a QDQ model. A block in an NHWC island is built
channels-last where the layer ends, so no Transpose is added. In a QDQ model the float block sits
after a DequantizeLinear and is followed by a copy of the Q/DQ pair before it (see `_requantize`).
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.constants import constant_array, count_parameters, is_constant, static_shape, value_dtype
from se_onnx.ir.gc_pause import collector_paused
from se_onnx.ir.graph import (
    MAIN_GRAPH,
    LayerPath,
    follow_layer,
    graph_paths,
    graphs,
    is_conv,
    is_op,
    node_label,
    owning_graph,
    scoped_name,
)
from se_onnx.ir.naming import NameScope, names_in_use
from se_onnx.ir.opset import model_opset
from se_onnx.ir.qdq import through_qdq
from se_onnx.ir.se_block import SEWeights, build_se_block, squeeze_width
from se_onnx.passes.find import find_se

PLACEMENTS = ("auto", "residual", "conv")
INITS = ("identity", "saturated", "random")

_QUANTIZED_CONVS = frozenset({"QLinearConv", "ConvInteger"})
# How far back the residual check walks from a branch to find its shortcut's source.
_RESIDUAL_SEARCH_LIMIT = 256


@dataclasses.dataclass(frozen=True)
class InsertOptions:
    """How and where the pass adds SE blocks (the CLI's options, one for one)."""

    where: str = "auto"  # residual, conv, or auto: residual when the model has residual blocks
    nodes: tuple[str, ...] = ()  # conv node names or regular expressions; only these convs
    ratio: float = 0.25
    min_squeeze: int = 1
    divisor: int | None = None
    min_channels: int = 1
    skip_depthwise: bool = False
    # identity: gate = 2·σ(0) = 1, outputs unchanged, trainable; saturated: gate = σ(20) = 1, the
    # plain block, outputs unchanged but not trainable; random: PyTorch's default init.
    init: str = "identity"
    seed: int = 0
    # Trained weights keyed "<block>.fc1.weight" etc., as `export_se_weights` writes them.
    weights: Mapping[str, np.ndarray] | None = None

    def validate(self) -> None:
        if self.where not in PLACEMENTS:
            raise SeOnnxError(f"--where must be one of {', '.join(PLACEMENTS)}, not {self.where!r}")
        if not 0 < self.ratio <= 1:
            raise SeOnnxError(f"--ratio must be in (0, 1], not {self.ratio:g}")
        if self.min_squeeze < 1:
            raise SeOnnxError(f"--min-squeeze must be at least 1, not {self.min_squeeze}")
        if self.divisor is not None and self.divisor < 1:
            raise SeOnnxError(f"--divisor must be at least 1, not {self.divisor}")
        if self.init not in INITS:
            raise SeOnnxError(f"--init must be one of {', '.join(INITS)}, not {self.init!r}")
        for pattern in self.nodes:
            try:
                re.compile(pattern)
            except re.error as error:
                raise SeOnnxError(f"--nodes {pattern!r} is not a valid regular expression: {error}") from None


@dataclasses.dataclass(frozen=True)
class InsertedBlock:
    """One SE block the pass added."""

    name: str  # the conv it follows (scoped by its graph when in a subgraph); the key of its weights
    placement: str  # residual or conv
    after: str  # the feature map it rescales
    channels: int
    squeeze_channels: int
    spatial_rank: int
    parameters: int  # its layers' weights and biases (`se_onnx.ir.constants.count_parameters`)
    nodes: tuple[str, ...]
    graph: str = MAIN_GRAPH  # the path of the graph it sits in
    layout: str = "NCHW"  # NHWC: built channels-last, in a Transposed island
    through: tuple[str, ...] = ()  # the ops between the conv and the block, in order
    requantized: bool = False  # a float block between a DequantizeLinear and a copy of its pair

    @property
    def position(self) -> str:
        """Where the block sits, in words."""
        if self.placement == "residual":
            where = "before the residual Add, after " + " → ".join(("Conv", *self.through))
        else:
            where = "after " + " → ".join(("Conv", *self.through)) if self.through else "right after the Conv"
        return f"{where} ({self.layout}{', requantized' if self.requantized else ''})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "nodes": list(self.nodes),
            "through": list(self.through),
            "position": self.position,
        }


@dataclasses.dataclass(frozen=True)
class SkippedConv:
    """A conv the pass left alone, and why."""

    conv: str
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class InsertReport:
    placement: str
    opset: int
    dtype: str
    blocks: list[InsertedBlock]
    skipped: list[SkippedConv]

    @property
    def parameters_added(self) -> int:
        return sum(block.parameters for block in self.blocks)

    def to_dict(self) -> dict:
        return {
            "placement": self.placement,
            "opset": self.opset,
            "dtype": self.dtype,
            "parameters_added": self.parameters_added,
            "blocks": [block.to_dict() for block in self.blocks],
            "skipped": [skipped.to_dict() for skipped in self.skipped],
        }


@dataclasses.dataclass(frozen=True)
class ConvInfo:
    """A conv layer's shape facts, read from its weight."""

    node: ir.Node
    out_channels: int
    in_channels: int
    kernel: tuple[int, ...]
    group: int
    graph: str = MAIN_GRAPH  # the path of the graph the conv sits in

    @property
    def name(self) -> str:
        """The conv's label, prefixed by its graph's path when it sits in a subgraph."""
        return scoped_name(node_label(self.node), self.graph)

    @property
    def spatial_rank(self) -> int:
        return len(self.kernel)

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.in_channels

    @classmethod
    def of(cls, node: ir.Node, graph: str = MAIN_GRAPH) -> ConvInfo | None:
        """The facts, or None when the weight's shape is not known statically (nor a constant)."""
        shape = static_shape(node.inputs[1]) if len(node.inputs) > 1 else None
        if shape is None or len(shape) < 3:
            return None
        group = node.attributes.get_int("group", 1)
        return cls(node, shape[0], shape[1] * group, tuple(shape[2:]), group, graph)


def model_convs(model: ir.Model) -> Iterator[tuple[ir.Node, str]]:
    """Every Conv of the model with the path of its graph, subgraphs to any depth."""
    for graph, path in graphs(model):
        for node in graph:
            if is_conv(node):
                yield node, path


@dataclasses.dataclass(frozen=True)
class InsertionSite:
    """Where one block goes: the value it rescales and which uses of it it replaces."""

    conv: ConvInfo
    placement: str
    anchor: ir.Value
    uses: tuple[tuple[ir.Node, int], ...]  # (consumer, input index) pairs to rewire
    path: LayerPath


@dataclasses.dataclass
class InsertionPlan:
    """Where the pass would put blocks: the resolved placement, its sites, and what it skips."""

    placement: str
    sites: list[InsertionSite]
    skipped: list[SkippedConv]
    conv_count: int


def plan_insertion(model: ir.Model, options: InsertOptions = InsertOptions()) -> InsertionPlan:
    """Decide where blocks go without changing the model (`insert_se` and `inspect` share it)."""
    options.validate()
    _refuse_quantized(model.graph)
    convs = list(model_convs(model))
    if not convs:
        raise SeOnnxError("the model has no Conv node, so there is nowhere to add SE blocks")
    se_blocks = find_se(model)
    se_nodes = {id(node) for block in se_blocks for node in block.nodes}
    skipped: list[SkippedConv] = []
    candidates: list[ConvInfo] = []
    for node, path in convs:
        info = ConvInfo.of(node, path)
        if id(node) in se_nodes:
            reason = "an excitation layer of an SE block"
        elif info is None:
            reason = "weight shape is not known statically"
        else:
            reason = _exclusion(info, options)
        if reason:
            skipped.append(SkippedConv(scoped_name(node_label(node), path), reason))
        else:
            candidates.append(info)

    placement = options.where
    if placement == "auto":
        has_residual = not options.nodes and any(True for _ in _residual_sites(candidates, convs))
        placement = "residual" if has_residual else "conv"
    if placement == "residual":
        sites = list(_residual_sites(candidates, convs))
    else:
        sites = []
        se_inputs = {id(block.input) for block in se_blocks}
        for site in map(_conv_site, candidates):
            if id(site.anchor) in se_inputs:
                skipped.append(SkippedConv(site.conv.name, "already followed by an SE block"))
            else:
                sites.append(site)
    return InsertionPlan(placement, sites, skipped, len(convs))


@dataclasses.dataclass
class InsertResult(ir.passes.PassResult):
    """The model with its blocks added, and the report of them."""

    report: InsertReport


class InsertSE(ir.passes.InPlacePass):
    """Adds SE blocks to the model in place, as `options` say (an onnx-ir pass).

    Raises SeOnnxError when the options are invalid, the model is unsupported (no conv, quantized
    convs, opset < 11), or nothing matches the placement; the model is then unchanged. The result
    carries the report; in a `PassManager`, whose result does not, read it from `report` after.
    """

    def __init__(self, options: InsertOptions = InsertOptions()) -> None:
        super().__init__()
        self.options = options
        self.report: InsertReport | None = None

    def call(self, model: ir.Model) -> InsertResult:
        opset = model_opset(model)
        with collector_paused():
            plan = plan_insertion(model, self.options)
            if not plan.sites:
                raise SeOnnxError(_nothing_matches(plan, self.options))
            dtype = _feature_dtype(plan.sites[0])
            blocks = _add_blocks(model, plan.sites, self.options, opset)
            model.graph.sort()  # and every subgraph
        self.report = InsertReport(plan.placement, opset, np.dtype(dtype.numpy()).name, blocks, plan.skipped)
        return InsertResult(model, True, self.report)


def insert_se(model: ir.Model, options: InsertOptions = InsertOptions()) -> tuple[ir.Model, InsertReport]:
    """Return a copy of `model` with SE blocks added as `options` say, and a report of them
    (`InsertSE` on a copy). The input model is not modified."""
    with collector_paused():
        model = model.clone()
    result = InsertSE(options)(model)
    return result.model, result.report


def _add_blocks(model: ir.Model, sites: Sequence[InsertionSite], options: InsertOptions, opset: int) -> list[InsertedBlock]:
    names = NameScope(names_in_use(model))
    paths: dict[ir.Graph, str] = {model.graph: MAIN_GRAPH}
    weights = _weights_per_site(sites, options)
    blocks = []
    for site, site_weights in zip(sites, weights):
        anchor = site.anchor
        # The block goes where its feature map is defined; bodies nested there see it too.
        graph = owning_graph(anchor)
        if graph not in paths:  # the first block in a subgraph: walk them all once
            paths = graph_paths(model)
        scope = names.child(f"{site.conv.name}/se/")
        built = build_se_block(
            anchor,
            site_weights,
            spatial_rank=site.conv.spatial_rank,
            opset=opset,
            dtype=_feature_dtype(site),
            names=scope,
            channels_last=site.path.channels_last,
        )
        for initializer in built.initializers:
            graph.register_initializer(initializer)
        graph.extend(built.nodes)
        nodes, output = list(built.nodes), built.output
        if site.path.quantized is not None:
            pair = _requantize(graph, output, *site.path.quantized, site_weights.gate_gain, scope)
            graph.extend(pair)
            nodes += pair
            output = pair[-1].outputs[0]
            output.type, output.shape = anchor.type, anchor.shape
        for consumer, index in site.uses:
            consumer.replace_input_with(index, output)
        after = anchor.name
        if site.placement == "conv" and anchor.is_graph_output():
            # The graph output keeps its name; the pre-SE feature map takes a fresh one.
            for index, graph_output in enumerate(graph.outputs):
                if graph_output is anchor:
                    graph.outputs[index] = output
            anchor.name, output.name = names(f"{anchor.name}_before_se"), anchor.name
        blocks.append(
            InsertedBlock(
                name=site.conv.name,
                placement=site.placement,
                after=after,
                channels=site_weights.channels,
                squeeze_channels=site_weights.squeeze_channels,
                spatial_rank=site.conv.spatial_rank,
                parameters=count_parameters(nodes),
                nodes=tuple(node.name for node in nodes),
                layout="NHWC" if site.path.channels_last else "NCHW",
                through=site.path.through,
                requantized=site.path.quantized is not None,
                graph=paths[graph],
            )
        )
    return blocks


def _requantize(
    graph: ir.Graph, value: ir.Value, quantize: ir.Node, dequantize: ir.Node, gain: float, names: NameScope
) -> list[ir.Node]:
    """A copy of the Q/DQ pair the block's input came out of, applied to the block's output.

    The block scales its input by gates in [0, gain], and a quantization range always holds 0, so
    the input's zero point with its scale times the gain holds the output: nothing clips. With a
    gain of 1 (`--init saturated`, or weights without one) the pair is the input's own, and under
    that identity init it gives back the very integers the model had; the trainable identity's
    gain of 2 makes the grid twice as coarse. The DequantizeLinear → op → QuantizeLinear groups
    around the block keep their shape.
    """
    scale = quantize.inputs[1]
    if gain != 1:
        array = constant_array(scale)
        if array is None:
            raise SeOnnxError(f"the scale of {node_label(quantize)!r} is not a constant, so the SE block cannot be requantized")
        tensor = ir.Tensor((array * np.asarray(gain, array.dtype)).astype(array.dtype), name=names("requantize_scale"))
        scale = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        graph.register_initializer(scale)
    copies = []
    for node, stem in ((quantize, "requantize"), (dequantize, "dequantize")):
        inputs = [value, scale, *node.inputs[2:]]
        attributes = {name: attribute.value for name, attribute in node.attributes.items()}
        copy = ir.node(node.op_type, inputs, attributes, domain=node.domain, name=names(stem), num_outputs=1)
        copy.outputs[0].name = names(f"{stem}_output")
        copies.append(copy)
        value = copy.outputs[0]
    return copies


def _weights_per_site(sites: Sequence[InsertionSite], options: InsertOptions) -> list[SEWeights]:
    if options.weights is not None:
        return _weights_from_file(sites, options.weights)
    rng = np.random.default_rng(options.seed)
    make = {"identity": SEWeights.identity, "saturated": SEWeights.saturated, "random": SEWeights.random}[options.init]
    result = []
    for site in sites:
        channels = site.conv.out_channels
        width = squeeze_width(channels, options.ratio, options.min_squeeze, options.divisor)
        result.append(make(channels, width, rng))
    return result


def _weights_from_file(sites: Sequence[InsertionSite], arrays: Mapping[str, np.ndarray]) -> list[SEWeights]:
    result = []
    expected_blocks = set()
    for site in sites:
        block = site.conv.name
        expected_blocks.add(block)
        prefix = f"{block}."
        block_arrays = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
        if not block_arrays:
            raise SeOnnxError(f"weights file has no weights for block {block!r}")
        result.append(
            SEWeights.from_arrays(
                block_arrays, channels=site.conv.out_channels, squeeze_channels=None, where=f"block {block!r}"
            )
        )
    unknown = sorted({key.rsplit(".", 2)[0] for key in arrays} - expected_blocks)
    if unknown:
        raise SeOnnxError(
            f"weights file has blocks that match no insertion site: {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    return result


def _exclusion(info: ConvInfo, options: InsertOptions) -> str | None:
    """Why the options rule this conv out, or None when it is a candidate."""
    labels = {info.name, node_label(info.node)}  # a conv in a subgraph answers to both
    if options.nodes and not any(
        label == pattern or re.fullmatch(pattern, label) for pattern in options.nodes for label in labels
    ):
        return "not selected by --nodes"
    if info.out_channels < options.min_channels:
        return f"{info.out_channels} channels < --min-channels {options.min_channels}"
    if options.skip_depthwise and info.depthwise:
        return "depthwise (--skip-depthwise)"
    return None


def _conv_site(info: ConvInfo) -> InsertionSite:
    """After the conv, past its BatchNorm and an activation that only it feeds."""
    path = follow_layer(info.node, activation=True)
    return InsertionSite(info, "conv", path.end, tuple(path.end.uses()), path)


def _residual_sites(candidates: Sequence[ConvInfo], convs: Sequence[tuple[ir.Node, str]]) -> Iterator[InsertionSite]:
    """One site per residual Add: the branch operand, when it ends in one of the candidate convs.

    Every conv's layer (`follow_layer`, without its activation) is followed to its end; an Add of
    two computed values that reads such an end is residual when `_residual_branch` says so.
    """
    candidate_ids = {id(info.node) for info in candidates}
    paths: dict[int, tuple[ConvInfo, LayerPath]] = {}
    for node, graph in convs:
        info = ConvInfo.of(node, graph)
        if info is not None:
            path = follow_layer(node, activation=False)
            paths[id(path.end)] = (info, path)
    adds: dict[int, ir.Node] = {}
    for _, path in paths.values():
        for consumer in path.end.consumers():
            if consumer.op_type == "Add" and consumer.domain in ("", "ai.onnx"):
                adds[id(consumer)] = consumer
    for add in adds.values():
        branch = _residual_branch(add, paths)
        if branch is not None and id(branch[1].node) in candidate_ids:
            index, info, path = branch
            yield InsertionSite(info, "residual", add.inputs[index], ((add, index),), path)


def _residual_branch(
    add: ir.Node, paths: Mapping[int, tuple[ConvInfo, LayerPath]]
) -> tuple[int, ConvInfo, LayerPath] | None:
    """(operand index, conv, its layer) of a residual Add's branch, or None when it is not residual.

    The branch ends in a conv's layer; the shortcut is either the block's input itself or a
    projection conv of it. Either way the shortcut's source is an ancestor of the branch conv's
    input, which rules out Adds of unrelated feature maps (FPN merges, bias Adds).
    """
    if len(add.inputs) != 2 or any(v is None or is_constant(v) for v in add.inputs):
        return None
    shapes = [v.shape for v in add.inputs]
    if shapes[0] is not None and shapes[1] is not None and len(shapes[0]) != len(shapes[1]):
        return None
    layers = [paths.get(id(value)) for value in add.inputs]
    for branch, shortcut in ((0, 1), (1, 0)):
        if layers[branch] is None:
            continue
        info, path = layers[branch]
        source = through_qdq(add.inputs[shortcut]) if layers[shortcut] is None else _layer_input(layers[shortcut][0])
        if _layer_input(info) is not source and _is_ancestor(source, info.node.inputs[0]):
            return branch, info, path
    return None


def _layer_input(info: ConvInfo) -> ir.Value:
    """The feature map a conv reads, before the Transpose to channels-first and Q/DQ pairs."""
    value = through_qdq(info.node.inputs[0])
    producer = value.producer()
    if producer is not None and producer.op_type == "Transpose":
        value = through_qdq(producer.inputs[0])
    return value


def _is_ancestor(ancestor: ir.Value, value: ir.Value) -> bool:
    seen: set[int] = set()
    queue = deque([value])
    while queue and len(seen) < _RESIDUAL_SEARCH_LIMIT:
        current = queue.popleft()
        if current is ancestor:
            return True
        producer = current.producer()
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        queue.extend(v for v in producer.inputs if v is not None)
    return False


def _feature_dtype(site: InsertionSite) -> ir.DataType:
    dtype = site.anchor.dtype or value_dtype(site.conv.node.inputs[1])
    if dtype is None:
        raise SeOnnxError(f"the element type of {site.anchor.name!r} is unknown")
    if not dtype.is_floating_point():
        raise SeOnnxError(f"{site.anchor.name!r} is {dtype.name}; SE blocks need a float feature map")
    return dtype


def _refuse_quantized(graph: ir.Graph) -> None:
    for node in graph.all_nodes():
        if node.op_type in _QUANTIZED_CONVS:
            raise SeOnnxError(
                f"the model is quantized ({node.op_type} node {node_label(node)!r}); "
                "insert SE blocks into the float model, then quantize it"
            )


def _nothing_matches(plan: InsertionPlan, options: InsertOptions) -> str:
    if plan.placement == "residual":
        message = "no residual block (a conv branch Added to its shortcut) matches"
    else:
        message = f"none of the model's {plan.conv_count} convs matches the options"
    reasons: dict[str, int] = {}
    for entry in plan.skipped:
        reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
    if reasons:
        message += " (skipped: " + "; ".join(f"{count} {reason}" for reason, count in reasons.items()) + ")"
    if plan.placement == "residual":
        message += "; try --where conv"
    return message
