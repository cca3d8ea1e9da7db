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
from collections.abc import Callable

import onnx_ir as ir

from se_onnx.errors import SeOnnxError
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
from se_onnx.passes.find import SEBlock, detect

# Each form and the block layout `se_block` builds for it (None: one function node per block).
_FORM_LAYOUTS = {"canonical": "gemm", "conv": "conv", "function": None}
FORMS = tuple(_FORM_LAYOUTS)
# Function overloads arrived in IR version 10.
FUNCTION_IR_VERSION = 10


@dataclasses.dataclass
class FuseReport:
    """What `fuse_se` did: the form asked for, the form written, the blocks, and any timings."""

    form: str
    written: str  # canonical, function, conv, or original (fastest kept the model as it was)
    blocks: list[dict]  # each block's `SEBlock.to_dict()`, names as in the input model

    def to_dict(self) -> dict:
        # The keys `se_onnx.runtime.fastest`'s report fills in, empty here, so every form's JSON has one shape.
        return {"form": self.form, "written": self.written, "provider": None, "timings": [], "blocks": self.blocks}


@dataclasses.dataclass
class FuseResult(ir.passes.PassResult):
    """The model with its SE blocks in the form asked for, and the report."""

    report: FuseReport


class FuseSE(ir.passes.InPlacePass):
    """Rewrites every SE block of the model into `form` in place (an onnx-ir pass; forms in the
    module docstring).

    Raises SeOnnxError for an unknown form or a model without SE blocks. The result carries the
    report; in a `PassManager`, read it from `report` after the run.
    """

    def __init__(self, form: str = "canonical") -> None:
        super().__init__()
        _check_form(form)
        self.form = form
        self.report: FuseReport | None = None

    def call(self, model: ir.Model) -> FuseResult:
        blocks = [block.to_dict() for block in _blocks(model)]
        layout = _FORM_LAYOUTS[self.form]
        if layout is None:
            _to_functions(model)
        else:
            _rewrite(model, _layout_builder(layout))
        self.report = FuseReport(self.form, self.form, blocks)
        return FuseResult(model, True, self.report)


def fuse_se(model: ir.Model, form: str = "canonical") -> tuple[ir.Model, FuseReport]:
    """A copy of `model` with every SE block rewritten into `form`, and the report (`FuseSE` on a
    copy). The input model is not modified."""
    result = FuseSE(form)(model.clone())
    return result.model, result.report


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise SeOnnxError(f"--form must be one of {', '.join(FORMS)}, not {form!r}")



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
