"""Rewrites every SE block of a model into one form: canonical, one function node each, or fastest.

Forms (`fuse_se(model, form=...)`):

- ``canonical``: the insertion pass's form, ReduceMean → Gemm → activation → Gemm → gate →
  Unsqueeze → Mul, with separate bias Adds folded into the Gemm biases and the gate kept as it was
  (a HardSigmoid keeps its alpha/beta; a written-out hard sigmoid becomes a HardSigmoid).
- ``function``: each block is one ``se_onnx.SqueezeExcitation`` node backed by a model-local
  function, so a graph viewer shows one node per block. The node carries the block's attributes
  (channels, squeeze_channels, activation, gate, gate_alpha/gate_beta) and takes the weights as
  inputs from initializers. Bodies differ by activation, gate, layer count and spatial rank, so
  each distinct body is an overload of the one function name (overloads need IR version 10).
  ONNX Runtime inlines model-local functions, so any ONNX Runtime runs it; `unfuse_se` inlines
  them back with onnx-ir's inliner.
- ``fastest``: the candidate form that ONNX Runtime runs fastest on the chosen provider, measured
  on this model: the original, ``canonical``, and ``conv`` (GlobalAveragePool → 1×1 Conv →
  activation → 1×1 Conv → gate → Mul, torchvision's form). The original is kept unless a
  candidate beats it by more than `MIN_GAIN` (median of run-by-run ratios), so the result is
  never measurably slower.

What the forms cost on the CPU provider (measured with benchmarks/bench_se_forms.py; figures in the
README): within a few percent of each other on most models, with torchvision's conv form clearly
slower on depthwise-separable models and faster on Conv1d ones. ONNX Runtime's NCHWc layout
transformer keeps convolutions in a channel-blocked layout, but the rescale Mul broadcasts an
N×C×1×1 gate over the feature map and is not kept blocked, so every form reorders the feature map
out of the blocked layout before the Mul and back after it. The canonical form needs fewer reorders
(its ReduceMean reads the copy the Mul needs anyway, and the excitation runs as FusedGemm on N×C
vectors; read from the graphs ONNX Runtime 1.32 optimizes, `SessionOptions.optimized_model_filepath`,
mobilenet_v3_small drops from 10 ReorderInput + 20 ReorderOutput to 9 + 10), while the conv form's
GlobalAveragePool and 1×1 convs run blocked; at batch 1 the two effects mostly cancel. Which form
wins depends on the model, the provider and the machine, so ``fastest`` measures instead of assuming.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Callable, Mapping

import onnx_ir as ir

from se_onnx.bench import pairwise_ratio, time_interleaved
from se_onnx.detect import SEBlock, detect
from se_onnx.errors import SeOnnxError
from se_onnx.graph_utils import model_opset, redirect, remove_unused
from se_onnx.model_io import uses_external_data
from se_onnx.naming import NameScope, names_in_use
from se_onnx.runtime import make_session, random_inputs
from se_onnx.se_block import (
    ACTIVATION_ALPHA,
    GATE_ALPHA,
    GATE_BETA,
    FUNCTION_NAME,
    SE_DOMAIN,
    BuiltBlock,
    LayerWeights,
    build_excitation,
    build_se_function_body,
)

FORMS = ("canonical", "function", "fastest")
# What `fastest` times: the model as given, and the block layouts `se_block` can build.
_CANDIDATE_LAYOUTS = {"original": None, "canonical": "gemm", "conv": "conv"}
CANDIDATES = tuple(_CANDIDATE_LAYOUTS)
# Function overloads arrived in IR version 10.
FUNCTION_IR_VERSION = 10
# A candidate must be this much faster than the original (median ratio below 1 - MIN_GAIN) to be
# chosen: smaller gains are within run-to-run noise and could be a slowdown in disguise.
MIN_GAIN = 0.02


@dataclasses.dataclass(frozen=True)
class FormTiming:
    """One candidate form's latency, measured interleaved with the original's."""

    form: str
    median_ms: float  # median latency of one run
    ratio: float  # median over rounds of (this form's run / the original's run in the same round)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FuseReport:
    """What `fuse_se` did: the form asked for, the form written, the blocks, and any timings."""

    form: str
    written: str  # canonical, function, conv, or original (fastest kept the model as it was)
    blocks: list[dict]  # each block's `SEBlock.to_dict()`, names as in the input model
    provider: str | None = None  # fastest only
    timings: list[FormTiming] = dataclasses.field(default_factory=list)  # fastest only

    def to_dict(self) -> dict:
        return {
            "form": self.form,
            "written": self.written,
            "provider": self.provider,
            "timings": [timing.to_dict() for timing in self.timings],
            "blocks": self.blocks,
        }


@dataclasses.dataclass
class FuseResult(ir.passes.PassResult):
    """The model with its SE blocks in the form asked for, and the report."""

    report: FuseReport


class FuseSE(ir.passes.InPlacePass):
    """Rewrites every SE block of the model into `form` in place (an onnx-ir pass; forms in the
    module docstring). `provider`, `runs`, `warmup` and `batch` set how `fastest` measures
    (`measure_forms`); when it keeps the original, the model is unchanged.

    Raises SeOnnxError for an unknown form or a model without SE blocks. The result carries the
    report; in a `PassManager`, read it from `report` after the run.
    """

    def __init__(
        self, form: str = "canonical", *, provider: str = "cpu", runs: int = 50, warmup: int = 5, batch: int = 1
    ) -> None:
        super().__init__()
        _check_form(form)
        self.form = form
        self.provider, self.runs, self.warmup, self.batch = provider, runs, warmup, batch
        self.report: FuseReport | None = None

    def call(self, model: ir.Model) -> FuseResult:
        form = self.form
        blocks = [block.to_dict() for block in _blocks(model)]
        if form == "canonical":
            _rewrite(model, _layout_builder("gemm"))
            self.report = FuseReport(form, form, blocks)
        elif form == "function":
            _to_functions(model)
            self.report = FuseReport(form, form, blocks)
        else:
            candidates = {name: model if layout is None else rebuild_se(model, layout) for name, layout in _CANDIDATE_LAYOUTS.items()}
            timings = measure_forms(
                candidates, provider=self.provider, runs=self.runs, warmup=self.warmup, batch=self.batch
            )
            best = min(timings, key=lambda timing: timing.ratio)
            written = best.form if best.ratio < 1.0 - MIN_GAIN else "original"
            if written != "original":
                _rewrite(model, _layout_builder(_CANDIDATE_LAYOUTS[written]))
            self.report = FuseReport(form, written, blocks, self.provider, timings)
        return FuseResult(model, self.report.written != "original", self.report)


def fuse_se(
    model: ir.Model,
    form: str = "canonical",
    *,
    provider: str = "cpu",
    runs: int = 50,
    warmup: int = 5,
    batch: int = 1,
) -> tuple[ir.Model, FuseReport]:
    """A copy of `model` with every SE block rewritten into `form`, and the report (`FuseSE` on a
    copy). The input model is not modified."""
    fuse = FuseSE(form, provider=provider, runs=runs, warmup=warmup, batch=batch)
    result = fuse(model.clone())
    return result.model, result.report


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise SeOnnxError(f"--form must be one of {', '.join(FORMS)}, not {form!r}")


def rebuild_se(model: ir.Model, layout: str) -> ir.Model:
    """A copy of `model` with every SE block rebuilt in `layout`: "gemm" (the canonical form) or
    "conv" (GlobalAveragePool → 1×1 Conv → activation → 1×1 Conv → gate → Mul; channels-last
    blocks stay in the gemm layout, since GlobalAveragePool and Conv read channels first)."""
    model = model.clone()
    _rewrite(model, _layout_builder(layout))
    return model


def measure_forms(
    models: Mapping[str, ir.Model], *, provider: str = "cpu", runs: int = 50, warmup: int = 5, batch: int = 1
) -> list[FormTiming]:
    """Latency of each model relative to ``models["original"]`` in ONNX Runtime.

    The models run interleaved (A B C A B C …, `se_onnx.bench.time_interleaved`) on the same seeded
    inputs, and each form's ratio is taken run by run against the original's run in the same round,
    which cancels slow drifts of the machine; the median discards outliers. The order rotates
    (A B C, then B C A, then C A B, an equal share of the runs each) so that no form always runs
    right after another one. The sessions' threads do not spin between runs: a session's spinning
    threads would otherwise steal the cores of the session that runs after it.
    """
    if "original" not in models:
        raise ValueError("measure_forms needs the original model under 'original'")
    sessions = {name: make_session(_in_memory_bytes(model), provider, spinning=False) for name, model in models.items()}
    feeds = random_inputs(sessions["original"], batch=batch)
    names = list(sessions)
    series: dict[str, list[float]] = {name: [] for name in names}
    for shift in range(len(names)):
        order = names[shift:] + names[:shift]
        tasks = [functools.partial(sessions[name].run, None, feeds) for name in order]
        share = max(1, runs // len(names) + (shift < runs % len(names)))
        for name, seconds in zip(order, time_interleaved(tasks, runs=share, warmup=warmup if shift == 0 else 0)):
            series[name].extend(seconds)
    return [
        FormTiming(
            form=name,
            median_ms=statistics.median(series[name]) * 1e3,
            ratio=pairwise_ratio(series["original"], series[name]).median,
        )
        for name in names
    ]


def _in_memory_bytes(model: ir.Model) -> bytes:
    """The serialized model with every weight inline: a session made from bytes has no directory
    to find external data files in."""
    if uses_external_data(model):
        model = ir.external_data.load_to_model(model.clone())
    return ir.to_proto(model).SerializeToString()


# --- Rewriting -----------------------------------------------------------------------------------


def _blocks(model: ir.Model) -> list[SEBlock]:
    detection = detect(model)
    if not detection.blocks:
        hint = ""
        if detection.near_misses:
            miss = detection.near_misses[0]
            hint = f" ({len(detection.near_misses)} near-misses, see se-onnx inspect; {miss.node!r}: {miss.reason})"
        raise SeOnnxError(f"the model has no SE block{hint}")
    return detection.blocks


# Builds a block's replacement over the feature map x; returns the value that stands for its output.
_Builder = Callable[[ir.Model, SEBlock, ir.Value, int, NameScope], ir.Value]


def _rewrite(model: ir.Model, build: _Builder) -> None:
    """Replace each SE block of `model` by what `build` makes for it, in place."""
    opset = model_opset(model)
    names = NameScope(names_in_use(model))
    # A block may rescale the output of the block before it, which that block's rewrite replaced.
    replaced: dict[ir.Value, ir.Value] = {}
    for index, block in enumerate(_blocks(model)):
        scope = names.child(f"{block.rescale.name or f'se_{index}'}/")
        output = build(model, block, replaced.get(block.input, block.input), opset, scope)
        redirect(block.output, output, names)
        replaced[block.output] = output
        block.rescale.graph.remove(block.nodes, safe=True)
    remove_unused(model)  # the old blocks' weights
    model.graph.sort()


def _layers(block: SEBlock) -> list[LayerWeights]:
    return [layer.weights for layer in block.layers]


def _layout_builder(layout: str) -> _Builder:
    def build(model: ir.Model, block: SEBlock, x: ir.Value, opset: int, names: NameScope) -> ir.Value:
        built = build_excitation(
            x,
            _layers(block),
            spatial_rank=block.spatial_rank,
            opset=opset,
            dtype=block.dtype,
            names=names,
            activation=block.activation,
            gate=block.gate,
            # GlobalAveragePool and Conv read channels first: an NHWC block keeps the gemm layout.
            layout="gemm" if block.channels_last else layout,
            channels_last=block.channels_last,
        )
        _add(block.rescale.graph, built)
        _keep_output_type(built.output, block.output)
        return built.output

    return build


def _add(graph: ir.Graph, built: BuiltBlock) -> None:
    for initializer in built.initializers:
        graph.register_initializer(initializer)
    graph.extend(built.nodes)


def _keep_output_type(new: ir.Value, old: ir.Value) -> None:
    new.type = old.type or new.type
    new.shape = old.shape or new.shape


def _to_functions(model: ir.Model) -> None:
    functions: dict[str, ir.Function] = {}

    def build(model: ir.Model, block: SEBlock, x: ir.Value, opset: int, names: NameScope) -> ir.Value:
        body = build_se_function_body(
            _layers(block),
            spatial_rank=block.spatial_rank,
            opset=opset,
            dtype=block.dtype,
            activation=block.activation,
            gate=block.gate,
            channels_last=block.channels_last,
        )
        overload = _overload(block)
        if overload not in functions:
            functions[overload] = _function(body, overload, opset)
        weights = []
        for value, array in zip(body.inputs[1:], body.arguments):
            tensor = ir.tensor(array, dtype=block.dtype, name=names(value.name))
            weight = ir.Value(
                name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(block.dtype), const_value=tensor
            )
            block.rescale.graph.register_initializer(weight)
            weights.append(weight)
        node = ir.Node(
            SE_DOMAIN,
            FUNCTION_NAME,
            [x, *weights],
            _call_attributes(block),
            overload=overload,
            num_outputs=1,
            name=names(FUNCTION_NAME),
        )
        block.rescale.graph.append(node)
        output = node.outputs[0]
        output.name = names("output")
        _keep_output_type(output, block.output)
        return output

    _rewrite(model, build)
    for function in functions.values():
        model.functions[function.identifier()] = function
    model.opset_imports[SE_DOMAIN] = 1
    model.ir_version = max(model.ir_version, FUNCTION_IR_VERSION)


def _overload(block: SEBlock) -> str:
    """The name of the function body a block needs: what varies between bodies."""
    activation = block.activation.op_type.lower() if block.activation else "one_layer"
    gain = "" if block.gate.gain == 1 else "_gain"
    layout = "_nhwc" if block.channels_last else ""
    return f"{activation}_{block.gate.op_type.lower()}{gain}_{block.spatial_rank}d{layout}"


def _function(body: BuiltBlock, overload: str, opset: int) -> ir.Function:
    graph = ir.Graph(body.inputs, [body.output], nodes=body.nodes, opset_imports={"": opset}, name=FUNCTION_NAME)
    body.output.name = "Y"
    attributes = [
        ir.Attr("channels", ir.AttributeType.INT, None),
        ir.Attr("squeeze_channels", ir.AttributeType.INT, None),
        ir.Attr("activation", ir.AttributeType.STRING, None),
        ir.Attr("gate", ir.AttributeType.STRING, None),
        # The ONNX defaults of HardSigmoid and LeakyRelu; a call sets the block's own values.
        ir.Attr(GATE_ALPHA, ir.AttributeType.FLOAT, 0.2),
        ir.Attr(GATE_BETA, ir.AttributeType.FLOAT, 0.5),
        ir.Attr(ACTIVATION_ALPHA, ir.AttributeType.FLOAT, 0.01),
    ]
    return ir.Function(SE_DOMAIN, FUNCTION_NAME, overload, graph=graph, attributes=attributes)


def _call_attributes(block: SEBlock) -> list[ir.Attr]:
    attributes = [
        ir.AttrInt64("channels", block.channels),
        ir.AttrInt64("squeeze_channels", block.squeeze_channels or 0),
        ir.AttrString("activation", block.activation.op_type if block.activation else "none"),
        ir.AttrString("gate", block.gate.op_type),
    ]
    if block.gate.op_type == "HardSigmoid":
        attributes += [ir.AttrFloat32(GATE_ALPHA, block.gate.alpha), ir.AttrFloat32(GATE_BETA, block.gate.beta)]
    if block.activation is not None and block.activation.alpha is not None:
        attributes.append(ir.AttrFloat32(ACTIVATION_ALPHA, block.activation.alpha))
    return attributes
