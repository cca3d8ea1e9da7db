"""The insertion pass: adds SE blocks after chosen conv layers of a model.

Placement follows SENet: on each residual branch, after the branch's last conv (and its
BatchNorm), before the residual Add; or after every conv, past its BatchNorm and activation so
that Conv+BN+activation fusions survive; or after convs chosen by name.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from se_onnx.detect import find_se
from se_onnx.errors import SeOnnxError
from se_onnx.gc_pause import collector_paused
from se_onnx.naming import NameScope, names_in_use
from se_onnx.se_block import MIN_OPSET, SEWeights, build_se_block, squeeze_width

PLACEMENTS = ("auto", "residual", "conv")
INITS = ("identity", "saturated", "random")

# Elementwise activations that a conv layer's output may pass through before the SE block.
_ACTIVATIONS = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "HardSwish", "HardSigmoid",
        "Sigmoid", "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu",
    }
)
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

    name: str  # the conv it follows; the key of its weights
    placement: str  # residual or conv
    after: str  # the feature map it rescales
    channels: int
    squeeze_channels: int
    spatial_rank: int
    nodes: tuple[str, ...]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"nodes": list(self.nodes)}


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
        return sum(2 * b.channels * b.squeeze_channels + b.channels + b.squeeze_channels for b in self.blocks)

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

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name

    @property
    def spatial_rank(self) -> int:
        return len(self.kernel)

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.in_channels

    @classmethod
    def of(cls, node: ir.Node) -> ConvInfo | None:
        """The facts, or None when the weight's shape is not known statically."""
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        shape = weight.shape if weight is not None else None
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape):
            return None
        group = node.attributes.get_int("group", 1)
        return cls(node, shape[0], shape[1] * group, tuple(shape[2:]), group)


@dataclasses.dataclass(frozen=True)
class InsertionSite:
    """Where one block goes: the value it rescales and which uses of it it replaces."""

    conv: ConvInfo
    placement: str
    anchor: ir.Value
    uses: tuple[tuple[ir.Node, int], ...]  # (consumer, input index) pairs to rewire


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
    graph = model.graph
    _refuse_quantized(graph)
    convs = [node for node in graph if _is_conv(node)]
    skipped = [SkippedConv(_node_label(node), "inside a subgraph (If/Loop/Scan)") for node in _subgraph_convs(graph)]
    if not convs and not skipped:
        raise SeOnnxError("the model has no Conv node, so there is nowhere to add SE blocks")
    candidates: list[ConvInfo] = []
    for node in convs:
        info = ConvInfo.of(node)
        reason = _exclusion(info, options) if info is not None else "weight shape is not known statically"
        if reason:
            skipped.append(SkippedConv(_node_label(node), reason))
        else:
            candidates.append(info)

    placement = options.where
    if placement == "auto":
        has_residual = not options.nodes and any(True for _ in _residual_sites(candidates))
        placement = "residual" if has_residual else "conv"
    if placement == "residual":
        sites = list(_residual_sites(candidates))
    else:
        sites = []
        se_inputs = {id(block.input) for block in find_se(model)}
        for site in map(_conv_site, candidates):
            if id(site.anchor) in se_inputs:
                skipped.append(SkippedConv(site.conv.name, "already followed by an SE block"))
            else:
                sites.append(site)
    return InsertionPlan(placement, sites, skipped, len(convs))


def insert_se(model: ir.Model, options: InsertOptions = InsertOptions()) -> tuple[ir.Model, InsertReport]:
    """Return a copy of `model` with SE blocks added as `options` say, and a report of them.

    The input model is not modified. Raises SeOnnxError when the options are invalid, the model is
    unsupported (no conv, quantized convs, opset < 11), or nothing matches the placement.
    """
    opset = model_opset(model)
    with collector_paused():
        model = model.clone()
        plan = plan_insertion(model, options)
        if not plan.sites:
            raise SeOnnxError(_nothing_matches(plan, options))
        dtype = _feature_dtype(plan.sites[0])
        blocks = _add_blocks(model, plan.sites, options, opset)
        model.graph.sort()
    return model, InsertReport(plan.placement, opset, np.dtype(dtype.numpy()).name, blocks, plan.skipped)



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


def _add_blocks(model: ir.Model, sites: Sequence[InsertionSite], options: InsertOptions, opset: int) -> list[InsertedBlock]:
    graph = model.graph
    names = NameScope(names_in_use(model))
    weights = _weights_per_site(sites, options)
    blocks = []
    for site, site_weights in zip(sites, weights):
        anchor = site.anchor
        built = build_se_block(
            anchor,
            site_weights,
            spatial_rank=site.conv.spatial_rank,
            opset=opset,
            dtype=_feature_dtype(site),
            names=names.child(f"{site.conv.name}/se/"),
        )
        for initializer in built.initializers:
            graph.register_initializer(initializer)
        graph.extend(built.nodes)
        for consumer, index in site.uses:
            consumer.replace_input_with(index, built.output)
        after = anchor.name
        if site.placement == "conv" and anchor.is_graph_output():
            # The graph output keeps its name; the pre-SE feature map takes a fresh one.
            for index, output in enumerate(graph.outputs):
                if output is anchor:
                    graph.outputs[index] = built.output
            anchor.name, built.output.name = names(f"{anchor.name}_before_se"), anchor.name
        blocks.append(
            InsertedBlock(
                name=site.conv.name,
                placement=site.placement,
                after=after,
                channels=site_weights.channels,
                squeeze_channels=site_weights.squeeze_channels,
                spatial_rank=site.conv.spatial_rank,
                nodes=tuple(node.name for node in built.nodes),
            )
        )
    return blocks


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
    if options.nodes and not any(
        info.name == pattern or re.fullmatch(pattern, info.name) for pattern in options.nodes
    ):
        return "not selected by --nodes"
    if info.out_channels < options.min_channels:
        return f"{info.out_channels} channels < --min-channels {options.min_channels}"
    if options.skip_depthwise and info.depthwise:
        return "depthwise (--skip-depthwise)"
    return None


def _conv_site(info: ConvInfo) -> InsertionSite:
    """After the conv, past a BatchNorm and an activation that only it feeds."""
    value = info.node.outputs[0]
    consumer = _sole_consumer(value)
    if consumer is not None and consumer.op_type == "BatchNormalization" and consumer.inputs[0] is value:
        value = consumer.outputs[0]
        consumer = _sole_consumer(value)
    if consumer is not None and consumer.op_type in _ACTIVATIONS and consumer.inputs[0] is value:
        value = consumer.outputs[0]
    elif (silu := _silu_output(value)) is not None:
        value = silu
    return InsertionSite(info, "conv", value, tuple(value.uses()))


def conv_before(value: ir.Value) -> ir.Node | None:
    """The conv whose layer ends in `value` (the inverse of `_conv_site`), or None.

    Walks back through an activation (or x·Sigmoid(x)) and a BatchNorm; an SE block is keyed by
    this conv's name, so weights exported from one model find their place in another.
    """
    producer = value.producer()
    if producer is not None and producer.op_type == "Mul":
        producer = _silu_input_producer(producer)
    elif producer is not None and producer.op_type in _ACTIVATIONS:
        producer = producer.inputs[0].producer()
    if producer is not None and producer.op_type == "BatchNormalization":
        producer = producer.inputs[0].producer()
    return producer if producer is not None and _is_conv(producer) else None


def _silu_input_producer(mul: ir.Node) -> ir.Node | None:
    x = next((v for v in mul.inputs if v is not None and _silu_output(v) is mul.outputs[0]), None)
    return x.producer() if x is not None else None


def _silu_output(value: ir.Value) -> ir.Value | None:
    """The output of x·Sigmoid(x) when that is all `value` feeds (SiLU as exporters write it)."""
    consumers = {node.op_type: node for node in value.consumers()}
    if len(value.uses()) != 2 or set(consumers) != {"Sigmoid", "Mul"}:
        return None
    sigmoid, mul = consumers["Sigmoid"], consumers["Mul"]
    if set(mul.inputs) == {value, sigmoid.outputs[0]} and len(sigmoid.outputs[0].uses()) == 1:
        return mul.outputs[0]
    return None


def _residual_sites(candidates: Sequence[ConvInfo]) -> Iterator[InsertionSite]:
    """One site per residual Add: the branch operand, when it ends in one of the candidate convs."""
    by_node = {id(info.node): info for info in candidates}
    adds = {}
    for info in candidates:
        for add in _residual_adds_after(info):
            adds[id(add)] = add
    for add in adds.values():
        branch = _residual_branch(add)
        if branch is None:
            continue
        index, conv = branch
        info = by_node.get(id(conv))
        if info is not None:
            yield InsertionSite(info, "residual", add.inputs[index], ((add, index),))


def _residual_adds_after(info: ConvInfo) -> Iterator[ir.Node]:
    value = info.node.outputs[0]
    for consumer in value.consumers():
        if consumer.op_type == "BatchNormalization" and consumer.inputs[0] is value:
            yield from (n for n in consumer.outputs[0].consumers() if n.op_type == "Add")
        elif consumer.op_type == "Add":
            yield consumer


def _residual_branch(add: ir.Node) -> tuple[int, ir.Node] | None:
    """(operand index, conv) of a residual Add's branch, or None when the Add is not residual.

    The branch ends in a conv (and maybe its BatchNorm); the shortcut is either the block's input
    itself or a projection conv of it. Either way the shortcut's source is an ancestor of the
    branch conv's input, which rules out Adds of unrelated feature maps (FPN merges, bias Adds).
    """
    if len(add.inputs) != 2 or any(v is None or v.const_value is not None or v.is_initializer() for v in add.inputs):
        return None
    convs = [_conv_behind(value) for value in add.inputs]
    if convs[0] is not None and convs[0].outputs[0].shape is not None and add.inputs[1].shape is not None:
        if len(convs[0].outputs[0].shape) != len(add.inputs[1].shape):
            return None
    for branch, shortcut in ((0, 1), (1, 0)):
        conv = convs[branch]
        if conv is None:
            continue
        shortcut_source = add.inputs[shortcut] if convs[shortcut] is None else convs[shortcut].inputs[0]
        if conv.inputs[0] is not shortcut_source and _is_ancestor(shortcut_source, conv.inputs[0]):
            return branch, conv
    return None


def _conv_behind(value: ir.Value) -> ir.Node | None:
    """The conv that produces `value`, directly or through its BatchNorm."""
    producer = value.producer()
    if producer is not None and producer.op_type == "BatchNormalization":
        producer = producer.inputs[0].producer()
    return producer if producer is not None and _is_conv(producer) else None


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


def _sole_consumer(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return next(iter(uses)).node


def _feature_dtype(site: InsertionSite) -> ir.DataType:
    dtype = site.anchor.dtype or site.conv.node.inputs[1].dtype
    if dtype is None:
        raise SeOnnxError(f"the element type of {site.anchor.name!r} is unknown")
    if not dtype.is_floating_point():
        raise SeOnnxError(f"{site.anchor.name!r} is {dtype.name}; SE blocks need a float feature map")
    return dtype


def _is_conv(node: ir.Node) -> bool:
    return node.op_type == "Conv" and node.domain in ("", "ai.onnx")


def _node_label(node: ir.Node) -> str:
    return node.name or node.outputs[0].name


def _subgraph_convs(graph: ir.Graph) -> Iterator[ir.Node]:
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if _is_conv(node) and node.graph is not graph:
            yield node


def _refuse_quantized(graph: ir.Graph) -> None:
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.op_type in _QUANTIZED_CONVS:
            raise SeOnnxError(
                f"the model is quantized ({node.op_type} node {_node_label(node)!r}); "
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
