"""Rewrites every SE block of a model into one form: canonical, torchvision's conv form, or one function node each.

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
- ``conv``: GlobalAveragePool → 1×1 Conv → activation → 1×1 Conv → gate → Mul, torchvision's form
  (channels-last blocks keep the canonical layout, since GlobalAveragePool and Conv read channels
  first).

Which form ONNX Runtime runs fastest is measured, not assumed: `se_onnx.runtime.fastest` times the
candidates on the model itself (`se-onnx fuse --form fastest`).

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
wins depends on the model, the provider and the machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from se_onnx.errors import OptionError
from se_onnx.ir.graph import redirect, remove_unused
from se_onnx.ir.naming import NameScope, names_in_use
from se_onnx.ir.opset import model_opset
from se_onnx.ir.se_block import (
    ACTIVATION_ALPHA,
    FUNCTION_NAME,
    GATE_ALPHA,
    GATE_BETA,
    SE_DOMAIN,
    BuiltBlock,
    LayerWeights,
    build_excitation,
    build_se_function_body,
)
from se_onnx.passes.base import Report, SEPass, SEResult
from se_onnx.passes.find import Detection, SEBlock, detect

# Each form and the block layout `se_block` builds for it (None: one function node per block).
_FORM_LAYOUTS = {"canonical": "gemm", "conv": "conv", "function": None}
FORMS = tuple(_FORM_LAYOUTS)
# Function overloads arrived in IR version 10.
FUNCTION_IR_VERSION = 10


@dataclasses.dataclass
class FuseReport(Report):
    """What `fuse_se` did: the form asked for, the form written, the blocks, and any timings."""

    form: str
    written: str  # canonical, function, conv, or original (nothing rewritten, or fastest kept the model)
    blocks: list[dict]  # each block's `SEBlock.to_dict()`, names as in the input model

    def to_dict(self) -> dict:
        # The keys `se_onnx.runtime.fastest`'s report fills in, empty here, so every form's JSON has one shape.
        return {"form": self.form, "written": self.written, "provider": None, "timings": [], "blocks": self.blocks}


class FuseSE(SEPass[FuseReport]):
    """Rewrites every SE block of the model into `form` in place (an onnx-ir pass; forms in the
    module docstring).

    A block whose rewrite would be the block itself, op for op with equal attributes and weights
    (a canonical block fused to canonical again), is left as it stands, so `modified` is False
    when every block already is in `form`, and a second run converges. A model without SE blocks
    is left as it was, and the report says why.
    """

    def __init__(self, form: str = "canonical") -> None:
        super().__init__()
        if form not in FORMS:
            raise OptionError("form", f"must be one of {', '.join(FORMS)}, not {form!r}")
        self.form = form

    def requires(self, model: ir.Model) -> None:
        model_opset(model)

    def call(self, model: ir.Model) -> SEResult[FuseReport]:
        detection = detect(model)
        if not detection.blocks:
            report = FuseReport(self.form, "original", [], nothing_to_do=_no_blocks(detection))
            return SEResult(model, False, report)
        described = [block.to_dict() for block in detection.blocks]
        layout = _FORM_LAYOUTS[self.form]
        if layout is None:
            rewritten = _to_functions(model, detection.blocks)
        else:
            rewritten = _rewrite(model, detection.blocks, _layout_builder(layout))
        return SEResult(model, rewritten > 0, FuseReport(self.form, self.form, described))


def fuse_se(model: ir.Model, form: str = "canonical") -> tuple[ir.Model, FuseReport]:
    """A copy of `model` with every SE block rewritten into `form`, and the report (`FuseSE` on a
    copy). The input model is not modified."""
    return FuseSE(form).on_copy(model)


# --- Rewriting -----------------------------------------------------------------------------------


def _no_blocks(detection: Detection) -> str:
    hint = ""
    if detection.near_misses:
        miss = detection.near_misses[0]
        hint = f" ({len(detection.near_misses)} near-misses, see se-onnx inspect; {miss.node!r}: {miss.reason})"
    return f"the model has no SE block{hint}"


# Builds a block's replacement over the feature map x, for the caller to add to the graph.
_Builder = Callable[[SEBlock, ir.Value, int, NameScope], BuiltBlock]


def _rewrite(model: ir.Model, blocks: list[SEBlock], build: _Builder) -> int:
    """Replace each SE block of `model` by what `build` makes for it, in place, unless that is the
    block as it stands; the number of blocks replaced."""
    opset = model_opset(model)
    names = NameScope(names_in_use(model))
    # A block may rescale the output of the block before it, which that block's rewrite replaced.
    replaced: dict[ir.Value, ir.Value] = {}
    for index, block in enumerate(blocks):
        scope = names.child(f"{block.rescale.name or f'se_{index}'}/")
        x = replaced.get(block.input, block.input)
        built = build(block, x, opset, scope)
        if _same_computation(block, x, built):
            continue
        graph = block.rescale.graph
        assert graph is not None  # the detector found the block in one of the model's graphs
        _add(graph, built)
        _keep_output_type(built.output, block.output)
        redirect(block.output, built.output, names)
        replaced[block.output] = built.output
        graph.remove(block.nodes, safe=True)
    if replaced:
        remove_unused(model)  # the old blocks' weights
        model.graph.sort()
    return len(replaced)


def _same_computation(block: SEBlock, x: ir.Value, built: BuiltBlock) -> bool:
    """Whether `built` is the block over `x` op for op: same ops, inputs, attributes and constants,
    only the names differ. Rewriting the block would then change nothing but names."""
    matched: dict[ir.Value, ir.Value] = {}  # a value of the block → its counterpart in `built`
    visited: set[ir.Node] = set()

    def same(old: ir.Value | None, new: ir.Value | None) -> bool:
        if old is None or new is None or old is x or new is x:
            return old is new
        if old in matched:
            return matched[old] is new
        matched[old] = new
        if old.const_value is not None or new.const_value is not None:
            return _same_constant(old.const_value, new.const_value)
        before, after = old.producer(), new.producer()
        if before is None or after is None or before in visited or old.index() != new.index():
            return False
        visited.add(before)
        return (
            (before.domain, before.op_type, before.overload) == (after.domain, after.op_type, after.overload)
            and len(before.inputs) == len(after.inputs)
            and len(before.outputs) == len(after.outputs)
            and _same_attributes(before.attributes, after.attributes)
            and all(same(a, b) for a, b in zip(before.inputs, after.inputs))
        )

    return same(block.output, built.output) and visited == set(block.nodes)


def _same_constant(old: ir.TensorProtocol | None, new: ir.TensorProtocol | None) -> bool:
    if old is None or new is None or old.dtype != new.dtype:
        return False
    a, b = old.numpy(), new.numpy()
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_attributes(old: Mapping[str, ir.Attr], new: Mapping[str, ir.Attr]) -> bool:
    if old.keys() != new.keys():
        return False
    for name, attribute in old.items():
        other = new[name]
        if attribute.is_ref() or other.is_ref() or attribute.type != other.type:
            return False
        if attribute.type == ir.AttributeType.TENSOR:
            if not _same_constant(attribute.value, other.value):
                return False
        elif attribute.type in (ir.AttributeType.FLOAT, ir.AttributeType.FLOATS):
            # As the model stores them: a float attribute is a float32.
            if not np.array_equal(np.float32(attribute.value), np.float32(other.value)):
                return False
        elif attribute.type in (ir.AttributeType.INTS, ir.AttributeType.STRINGS):
            if list(attribute.value) != list(other.value):
                return False
        elif attribute.type not in (ir.AttributeType.INT, ir.AttributeType.STRING) or attribute.value != other.value:
            return False
    return True


def _layers(block: SEBlock) -> list[LayerWeights]:
    return [layer.weights for layer in block.layers]


def _layout_builder(layout: str) -> _Builder:
    def build(block: SEBlock, x: ir.Value, opset: int, names: NameScope) -> BuiltBlock:
        return build_excitation(
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

    return build


def _add(graph: ir.Graph, built: BuiltBlock) -> None:
    for initializer in built.initializers:
        graph.register_initializer(initializer)
    graph.extend(built.nodes)


def _keep_output_type(new: ir.Value, old: ir.Value) -> None:
    new.type = old.type or new.type
    new.shape = old.shape or new.shape


def _to_functions(model: ir.Model, blocks: list[SEBlock]) -> int:
    """Replace each block by a call of its function overload; the number of blocks replaced."""
    functions: dict[str, ir.Function] = {}

    def build(block: SEBlock, x: ir.Value, opset: int, names: NameScope) -> BuiltBlock:
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
            assert value.name is not None  # the builder names every body input
            tensor = ir.tensor(array, dtype=block.dtype, name=names(value.name))
            weight = ir.Value(
                name=tensor.name, shape=ir.Shape(array.shape), type=ir.TensorType(block.dtype), const_value=tensor
            )
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
        node.outputs[0].name = names("output")
        return BuiltBlock([node], weights, node.outputs[0])

    # A call is never a block of plain ops, so every block is replaced.
    replaced = _rewrite(model, blocks, build)
    for function in functions.values():
        model.functions[function.identifier()] = function
    model.opset_imports[SE_DOMAIN] = 1
    model.ir_version = max(model.ir_version, FUNCTION_IR_VERSION)
    return replaced


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
    gate = block.gate
    if gate.op_type == "HardSigmoid":
        assert gate.alpha is not None and gate.beta is not None  # the detector reads both for every HardSigmoid
        attributes += [ir.AttrFloat32(GATE_ALPHA, gate.alpha), ir.AttrFloat32(GATE_BETA, gate.beta)]
    if block.activation is not None and block.activation.alpha is not None:
        attributes.append(ir.AttrFloat32(ACTIVATION_ALPHA, block.activation.alpha))
    return attributes
