"""The insertion pass: adds SE blocks after chosen conv layers of a model.

Placement follows SENet: on each residual branch, after the branch's last conv (and its
BatchNorm, and its activation where the branch ends in one, as YOLO's and CSPNet's bottlenecks
do), before the residual Add; or after every conv, past its BatchNorm and activation so that
Conv+BN+activation fusions survive; or after convs chosen by name.

A conv's layer is followed the way exporters write it (`follow_layer`): through a Transpose to
channels-last (tf2onnx runs BatchNorm, activations and residual Adds in NHWC between Transposes
around each Conv), BatchNorm as a node or as Mul + Add by per-channel constants, and the
QuantizeLinear → DequantizeLinear pairs of a QDQ model, and past the no-ops exporters leave
(`se_onnx.ir.graph.is_no_op`), which stay where they are. A block in an NHWC island is built
channels-last where the layer ends, so no Transpose is added. In a QDQ model the float block sits
after a DequantizeLinear and is followed by a copy of the Q/DQ pair before it (see `_requantize`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from se_onnx.errors import OptionError, SeOnnxError
from se_onnx.ir.attention import (
    CBAM_SPATIAL_KERNEL,
    COORD_MIN_HIDDEN,
    IMAGE_KINDS,
    KIND_NAMES,
    KINDS,
    AttentionWeights,
    build_attention_block,
    eca_kernel,
)
from se_onnx.ir.constants import (
    constant_array,
    count_parameters,
    is_constant,
    is_quantize_op,
    static_shape,
    value_dtype,
)
from se_onnx.ir.gc_pause import collector_paused
from se_onnx.ir.graph import (
    MAIN_GRAPH,
    LayerPath,
    follow_layer,
    graph_paths,
    graphs,
    is_conv,
    is_no_op,
    node_label,
    owning_graph,
    required_input,
    scoped_name,
    through_no_ops,
    underlying,
)
from se_onnx.ir.naming import NameScope, names_in_use
from se_onnx.ir.opset import model_opset
from se_onnx.ir.se_block import (
    FUNCTION_NAME,
    SE_DOMAIN,
    SEWeights,
    build_se_block,
    squeeze_width,
)
from se_onnx.passes.base import Report, SEPass, SEResult
from se_onnx.passes.find_attention import find_attention

PLACEMENTS = ("auto", "residual", "conv")
INITS = ("identity", "saturated", "random")

_QUANTIZED_CONVS = frozenset({"QLinearConv", "ConvInteger"})
_HAS_BLOCK = "already followed by an attention block"
# How far back the residual check walks from a branch to find its shortcut's source.
_RESIDUAL_SEARCH_LIMIT = 256


@dataclasses.dataclass(frozen=True)
class InsertOptions:
    """How and where the pass adds SE blocks (the CLI's options, one for one), checked when made."""

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
    # Trained weights keyed "<block>.fc1.weight" etc., as `export_weights` writes them.
    weights: Mapping[str, np.ndarray] | None = None
    # The kind of block (`se_onnx.ir.attention.KINDS`); --ratio sets CBAM's MLP width and
    # coordinate attention's hidden width (at least 8) too.
    block: str = "se"
    eca_kernel: int | None = None  # ECA's 1-D kernel; None: the paper's adaptive size per C
    cbam_spatial_kernel: int = CBAM_SPATIAL_KERNEL

    def __post_init__(self) -> None:
        if self.where not in PLACEMENTS:
            raise OptionError("where", f"must be one of {', '.join(PLACEMENTS)}, not {self.where!r}")
        if not 0 < self.ratio <= 1:
            raise OptionError("ratio", f"must be in (0, 1], not {self.ratio:g}")
        if self.min_squeeze < 1:
            raise OptionError("min_squeeze", f"must be at least 1, not {self.min_squeeze}")
        if self.divisor is not None and self.divisor < 1:
            raise OptionError("divisor", f"must be at least 1, not {self.divisor}")
        if self.init not in INITS:
            raise OptionError("init", f"must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.block not in KINDS:
            raise OptionError("block", f"must be one of {', '.join(KINDS)}, not {self.block!r}")
        if self.init == "saturated" and self.block != "se":
            raise OptionError("init", "saturated is SE's plain block; use identity or random for other kinds")
        # An odd kernel, padded (k - 1)/2 on each side, keeps the length it slides over.
        for option, kernel in (("eca_kernel", self.eca_kernel), ("cbam_spatial_kernel", self.cbam_spatial_kernel)):
            if kernel is not None and (kernel < 1 or kernel % 2 == 0):
                raise OptionError(option, f"must be an odd number of at least 1, not {kernel}")
        for pattern in self.nodes:
            try:
                re.compile(pattern)
            except re.error as error:
                raise OptionError("nodes", f"{pattern!r} is not a valid regular expression: {error}") from None


@dataclasses.dataclass(frozen=True)
class InsertedBlock:
    """One block the pass added (SE, or the kind `kind` names)."""

    name: str  # the conv it follows (scoped by its graph when in a subgraph); the key of its weights
    placement: str  # residual or conv
    after: str | None  # the feature map it rescales (None only for an unnamed value of an in-memory model)
    channels: int
    squeeze_channels: int | None  # SE's and CBAM's squeeze width, coordinate attention's M; None for ECA
    spatial_rank: int
    parameters: int  # its layers' weights and biases (`se_onnx.ir.constants.count_parameters`)
    nodes: tuple[str, ...]
    graph: str = MAIN_GRAPH  # the path of the graph it sits in
    layout: str = "NCHW"  # NHWC: built channels-last, in a Transposed island
    through: tuple[str, ...] = ()  # the ops between the conv and the block, in order
    requantized: bool = False  # a float block between a DequantizeLinear and a copy of its pair
    kind: str = "se"
    kernel: int | None = None  # ECA's 1-D kernel, CBAM's spatial kernel

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
class InsertReport(Report):
    """What `insert_se` added, and the convs it skipped."""

    placement: str
    opset: int
    dtype: str | None  # the feature maps' element type; None when no block was added
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
    """Decide where blocks go without changing the model (`insert_se` and `inspect` share it; the
    model is one that `check_insertable` accepts)."""
    convs = list(model_convs(model))
    se_blocks = find_attention(model)  # blocks of every kind: their convs are no candidates
    kind_of = {id(node): block.kind for block in se_blocks for node in block.nodes}
    # The model's blocks as (input, output): those found, and the fuse pass's function calls.
    existing = [(block.input, block.output) for block in se_blocks] + [
        (node.inputs[0], node.outputs[0])
        for node in model.graph.all_nodes()
        if node.domain == SE_DOMAIN and node.op_type == FUNCTION_NAME
    ]
    skipped: list[SkippedConv] = []
    candidates: list[ConvInfo] = []
    for node, path in convs:
        info = ConvInfo.of(node, path)
        reason: str | None
        if id(node) in kind_of:
            kind = kind_of[id(node)]
            reason = (
                "an excitation layer of an SE block" if kind == "se" else f"a layer of a block ({KIND_NAMES[kind]})"
            )
        elif info is None:
            reason = "weight shape is not known statically"
        else:
            reason = _exclusion(info, options)
            if not reason:
                candidates.append(info)
                continue
        skipped.append(SkippedConv(scoped_name(node_label(node), path), reason))

    placement = options.where
    if placement == "auto":
        # A residual branch that already has its block still makes the model residual.
        has_residual = not options.nodes and any(True for _ in _residual_sites(candidates, convs, existing))
        placement = "residual" if has_residual else "conv"
    found = _residual_sites(candidates, convs, existing) if placement == "residual" else map(_conv_site, candidates)
    se_inputs = {id(through_no_ops(block_input)) for block_input, _ in existing if block_input is not None}
    sites = []
    for site in found:
        # A residual site whose branch has its block reads the block's output, not the layer's end.
        if placement == "residual":
            covered = through_no_ops(site.anchor) is not through_no_ops(site.path.end)
        else:
            covered = id(through_no_ops(site.anchor)) in se_inputs
        reason = _HAS_BLOCK if covered else _kind_exclusion(site, options.block)
        if reason:
            skipped.append(SkippedConv(site.conv.name, reason))
        else:
            sites.append(site)
    return InsertionPlan(placement, sites, skipped, len(convs))


def check_insertable(model: ir.Model) -> None:
    """Refuse a model the insertion pass cannot add blocks to: QOperator-quantized convs, no Conv."""
    for node in model.graph.all_nodes():
        if node.op_type in _QUANTIZED_CONVS:
            raise SeOnnxError(
                f"the model is quantized ({node.op_type} node {node_label(node)!r}); "
                "insert SE blocks into the float model, then quantize it"
            )
    if not any(True for _ in model_convs(model)):
        raise SeOnnxError("the model has no Conv node, so there is nowhere to add SE blocks")


class InsertSE(SEPass[InsertReport]):
    """Adds SE blocks to the model in place, as `options` say (an onnx-ir pass).

    `requires()` refuses a model older than opset 11, one with quantized convs (QLinearConv,
    ConvInteger) or one without a Conv. When no conv matches the placement and the options (every
    chosen conv already has its block, say) the model is left as it was: `modified=False`, and the
    report says why. An error while adding blocks (weights that do not fit) also leaves it as it was.
    """

    def __init__(self, options: InsertOptions = InsertOptions()) -> None:
        super().__init__()
        self.options = options

    def requires(self, model: ir.Model) -> None:
        model_opset(model)
        check_insertable(model)

    def call(self, model: ir.Model) -> SEResult[InsertReport]:
        opset = model_opset(model)
        with collector_paused():
            if self.options.block == "coord":
                _complete_spatial_shapes(model)
            plan = plan_insertion(model, self.options)
            if not plan.sites:
                why = _nothing_matches(plan)
                report = InsertReport(plan.placement, opset, None, [], plan.skipped, nothing_to_do=why)
                return SEResult(model, False, report)
            dtype = _feature_dtype(plan.sites[0])
            blocks = _add_blocks(model, plan.sites, self.options, opset)
            model.graph.sort()  # and every subgraph
        report = InsertReport(plan.placement, opset, np.dtype(dtype.numpy()).name, blocks, plan.skipped)
        return SEResult(model, True, report)


def insert_se(model: ir.Model, options: InsertOptions = InsertOptions()) -> tuple[ir.Model, InsertReport]:
    """Return a copy of `model` with SE blocks added as `options` say, and a report of them
    (`InsertSE` on a copy). The input model is not modified."""
    with collector_paused():  # the copy, too, makes many objects and no garbage
        return InsertSE(options).on_copy(model)


def _add_blocks(
    model: ir.Model, sites: Sequence[InsertionSite], options: InsertOptions, opset: int
) -> list[InsertedBlock]:
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
        scope = names.child(f"{site.conv.name}/{options.block}/")
        width: int | None
        kernel: int | None
        if isinstance(site_weights, SEWeights):
            built = build_se_block(
                anchor,
                site_weights,
                spatial_rank=site.conv.spatial_rank,
                opset=opset,
                dtype=_feature_dtype(site),
                names=scope,
                channels_last=site.path.channels_last,
            )
            channels, width, kernel, output_range = (
                site_weights.channels,
                site_weights.squeeze_channels,
                None,
                site_weights.gate_gain,
            )
        else:
            channels = site.conv.out_channels
            built = build_attention_block(
                anchor,
                site_weights,
                spatial_rank=site.conv.spatial_rank,
                opset=opset,
                dtype=_feature_dtype(site),
                names=scope,
                channels=channels,
                spatial=_static_spatial(anchor),
            )
            width, kernel, output_range = site_weights.hidden, site_weights.kernel, site_weights.output_range
        for initializer in built.initializers:
            graph.register_initializer(initializer)
        graph.extend(built.nodes)
        nodes, output = list(built.nodes), built.output
        if site.path.quantized is not None:
            pair = _requantize(graph, output, *site.path.quantized, output_range, scope)
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
                channels=channels,
                squeeze_channels=width,
                spatial_rank=site.conv.spatial_rank,
                parameters=count_parameters(nodes),
                nodes=tuple(node_label(node) for node in nodes),  # named by the builder
                layout="NHWC" if site.path.channels_last else "NCHW",
                through=site.path.through,
                requantized=site.path.quantized is not None,
                graph=paths[graph],
                kind=options.block,
                kernel=kernel,
            )
        )
    return blocks


def _requantize(
    graph: ir.Graph, value: ir.Value, quantize: ir.Node, dequantize: ir.Node, gain: float, names: NameScope
) -> list[ir.Node]:
    """A copy of the Q/DQ pair the block's input came out of, applied to the block's output.

    The block scales its input by gates in [0, gain] (`gain` is the product of a block's gains when
    it has two gates in a row, as CBAM and coordinate attention have), and a quantization range always holds 0, so
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
            raise SeOnnxError(
                f"the scale of {node_label(quantize)!r} is not a constant, so the SE block cannot be requantized"
            )
        tensor = ir.Tensor((array * np.asarray(gain, array.dtype)).astype(array.dtype), name=names("requantize_scale"))
        scale = ir.Value(
            name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
        )
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


def _weights_per_site(sites: Sequence[InsertionSite], options: InsertOptions) -> list[SEWeights | AttentionWeights]:
    if options.weights is not None:
        return _weights_from_file(sites, options.weights, options.block)
    rng = np.random.default_rng(options.seed)
    result: list[SEWeights | AttentionWeights] = []
    for site in sites:
        channels = site.conv.out_channels
        if options.block == "se":
            make = {"identity": SEWeights.identity, "saturated": SEWeights.saturated, "random": SEWeights.random}
            width = squeeze_width(channels, options.ratio, options.min_squeeze, options.divisor)
            result.append(make[options.init](channels, width, rng))
            continue
        min_hidden = max(options.min_squeeze, COORD_MIN_HIDDEN) if options.block == "coord" else options.min_squeeze
        hidden = squeeze_width(channels, options.ratio, min_hidden, options.divisor)
        kernel = options.cbam_spatial_kernel
        if options.block == "eca":
            kernel = options.eca_kernel or eca_kernel(channels)
        attention = AttentionWeights.identity if options.init == "identity" else AttentionWeights.random
        result.append(attention(options.block, channels, rng, hidden=hidden, kernel=kernel))
    return result


def _weights_from_file(
    sites: Sequence[InsertionSite], arrays: Mapping[str, np.ndarray], kind: str
) -> list[SEWeights | AttentionWeights]:
    result: list[SEWeights | AttentionWeights] = []
    expected_blocks = set()
    for site in sites:
        block = site.conv.name
        expected_blocks.add(block)
        prefix = f"{block}."
        block_arrays = {key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)}
        if not block_arrays:
            raise SeOnnxError(f"weights file has no weights for block {block!r}")
        where, channels = f"block {block!r}", site.conv.out_channels
        if kind == "se":
            result.append(SEWeights.from_arrays(block_arrays, channels=channels, squeeze_channels=None, where=where))
        else:
            result.append(AttentionWeights.from_arrays(kind, block_arrays, channels=channels, where=where))
    unknown = sorted({key.rsplit(".", 2)[0] for key in arrays} - expected_blocks)
    if unknown:
        raise SeOnnxError(
            f"weights file has blocks that match no insertion site: {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    return result


def _kind_exclusion(site: InsertionSite, kind: str) -> str | None:
    """Why a site cannot take a block of `kind` (SE goes anywhere), or None."""
    if kind == "se":
        return None
    name = KIND_NAMES[kind]
    if site.path.channels_last:
        return f"an NHWC feature map ({name} blocks are built channels-first)"
    if kind in IMAGE_KINDS and site.conv.spatial_rank != 2:
        return f"a {site.conv.spatial_rank}-D feature map ({name} needs N×C×H×W)"
    if kind == "coord" and _static_spatial(site.anchor) is None:
        return "the feature map's height and width are not static (coordinate attention splits by them)"
    return None


def _complete_spatial_shapes(model: ir.Model) -> None:
    """Give the main graph's feature maps the static shapes shape inference finds where the model
    leaves them unknown: coordinate attention splits by H and W. ONNX's own inference first; where
    it stops (a Slice whose bounds come from Shape arithmetic, as YOLOv8's C2f chunks are exported),
    ONNX Runtime's symbolic shape inference, which reads such arithmetic (neither runs the model)."""
    unknown = [
        output
        for node in model.graph
        for output in node.outputs
        if output.shape is None or (len(output.shape) >= 3 and _static_spatial(output) is None)
    ]
    if not unknown:
        return
    proto = ir.to_proto(model)
    for infer in (onnx.shape_inference.infer_shapes, _symbolic_shapes):
        shapes = {info.name: info.type.tensor_type.shape for info in infer(proto).graph.value_info}
        for output in unknown:
            shape = shapes.get(output.name or "")
            if shape is not None and shape.dim:
                dims = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in shape.dim]
                if len(dims) >= 3 and all(isinstance(dim, int) for dim in dims[2:]):
                    output.shape = ir.Shape(dims)
        unknown = [output for output in unknown if _static_spatial(output) is None]
        if not unknown:
            return


def _symbolic_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference of `proto`, or `proto` as it is where it fails (it
    raises on ops it does not know)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception:  # noqa: BLE001 - any failure only means no more shapes are known
        return proto


def _static_spatial(value: ir.Value) -> tuple[int, ...] | None:
    """The feature map's spatial dims when all are known integers."""
    if value.shape is None or len(value.shape) < 3:
        return None
    dims = tuple(value.shape[2:])
    return dims if all(isinstance(dim, int) for dim in dims) else None  # type: ignore[return-value]


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


def _residual_sites(
    candidates: Sequence[ConvInfo],
    convs: Sequence[tuple[ir.Node, str]],
    existing: Sequence[tuple[ir.Value | None, ir.Value]],
) -> Iterator[InsertionSite]:
    """One site per residual Add: the branch operand, when it ends in one of the candidate convs.

    Every conv's layer (`follow_layer`, with its activation) is followed to its end; an Add of two
    computed values that reads such an end (past no-ops) is residual when `_residual_branch` says
    so. A branch ending Conv → BN goes before the Add as in SENet, and one ending Conv → BN →
    activation (YOLO's C2f and CSPNet's bottlenecks) after its activation, before the Add. A
    branch whose layer already ends in one of the `existing` blocks (input, output) is one too: its
    Add reads the block's output (through the copied Q/DQ pair in a QDQ model), and its site's
    anchor is that operand, not the layer's end.
    """
    candidate_ids = {id(info.node) for info in candidates}
    paths: dict[int, tuple[ConvInfo, LayerPath]] = {}
    for node, graph in convs:
        info = ConvInfo.of(node, graph)
        if info is not None:
            path = follow_layer(node, activation=True)
            # Keyed by the value before any no-ops, which the Add may read past or short of.
            paths[id(through_no_ops(path.end))] = (info, path)
    readers: list[Iterable[ir.Node]] = [_readers(path.end) for _, path in paths.values()]
    after_se: dict[int, tuple[ConvInfo, LayerPath]] = {}
    for block_input, block_output in existing:
        if block_input is not None and (layer := paths.get(id(through_no_ops(block_input)))) is not None:
            after_se[id(block_output)] = layer
            readers.append(_readers(block_output))

    def layer_of(value: ir.Value) -> tuple[ConvInfo, LayerPath] | None:
        return paths.get(id(through_no_ops(value))) or after_se.get(id(underlying(value)))

    adds: dict[int, ir.Node] = {}
    for consumer in itertools.chain.from_iterable(readers):
        if consumer.op_type == "Add" and consumer.domain in ("", "ai.onnx"):
            adds[id(consumer)] = consumer
    for add in adds.values():
        branch = _residual_branch(add, layer_of)
        if branch is not None and id(branch[1].node) in candidate_ids:
            index, info, path = branch
            yield InsertionSite(info, "residual", required_input(add, index), ((add, index),), path)


def _residual_branch(
    add: ir.Node, layer_of: Callable[[ir.Value], tuple[ConvInfo, LayerPath] | None]
) -> tuple[int, ConvInfo, LayerPath] | None:
    """(operand index, conv, its layer) of a residual Add's branch, or None when it is not residual.

    The branch ends in a conv's layer; the shortcut is either the block's input itself or a
    projection conv of it (a conv layer without an activation: one that ends in its activation is
    a feature map the block reads, as where a YOLO C3 bottleneck adds its input). Either way the
    shortcut's source is an ancestor of the branch conv's input, which rules out Adds of unrelated
    feature maps (FPN merges, bias Adds), and a branch of one conv reading that source is none.
    """
    if len(add.inputs) != 2:
        return None
    first, second = add.inputs
    if first is None or second is None or is_constant(first) or is_constant(second):
        return None
    if first.shape is not None and second.shape is not None and len(first.shape) != len(second.shape):
        return None
    operands = (first, second)
    layers = [layer_of(value) for value in operands]
    for branch, shortcut in ((0, 1), (1, 0)):
        branch_layer, shortcut_layer = layers[branch], layers[shortcut]
        if branch_layer is None:
            continue
        info, path = branch_layer
        projection = shortcut_layer is not None and not shortcut_layer[1].activated
        source = _layer_input(shortcut_layer[0]) if shortcut_layer and projection else underlying(operands[shortcut])
        if _layer_input(info) is not source and _is_ancestor(source, required_input(info.node)):
            return branch, info, path
    return None


def _readers(value: ir.Value) -> Iterator[ir.Node]:
    """The nodes that read `value`, directly or through Q/DQ pairs and no-ops."""
    for consumer in value.consumers():
        if (
            is_quantize_op(consumer, "QuantizeLinear")
            or is_quantize_op(consumer, "DequantizeLinear")
            or (is_no_op(consumer) and consumer.inputs[0] is value)
        ):
            yield from _readers(consumer.outputs[0])
        else:
            yield consumer


def _layer_input(info: ConvInfo) -> ir.Value:
    """The feature map a conv reads, before the Transpose to channels-first, Q/DQ pairs and no-ops."""
    value = underlying(required_input(info.node))
    producer = value.producer()
    if producer is not None and producer.op_type == "Transpose":
        value = underlying(required_input(producer))
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


def _nothing_matches(plan: InsertionPlan) -> str:
    if plan.placement == "residual":
        message = "no residual block (a conv branch Added to its shortcut) matches"
    else:
        message = f"none of the model's {plan.conv_count} convs matches the options"
    reasons: dict[str, int] = {}
    for entry in plan.skipped:
        reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
    if reasons:
        message += " (skipped: " + "; ".join(f"{count} {reason}" for reason, count in reasons.items()) + ")"
    if plan.placement == "residual" and _HAS_BLOCK not in reasons:  # no residual branch at all
        message += "; try --where conv"
    return message
