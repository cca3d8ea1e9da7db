"""The canonical SE block: its weights, and the ONNX nodes that compute it at any opset from 11.

squeeze (ReduceMean over the spatial axes) → Gemm (C → S) → activation → Gemm (S → C) → gate
→ Unsqueeze back to the feature map's rank → Mul with the feature map. The insertion pass writes
this form, and fusing rewrites the blocks it finds into it. The same builder also writes the
"conv" layout (GlobalAveragePool → 1×1 Conv … → Mul), one-layer blocks, and the body of the
function that the fuse pass's function form calls.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.naming import NameScope
from se_onnx.ir.opset import (
    HARD_SWISH_OPSET,
    MIN_OPSET,
    REDUCE_MEAN_AXES_AS_INPUT,
    UNSQUEEZE_AXES_AS_INPUT,
)

# sigmoid(SATURATED_GATE_BIAS) rounds to exactly 1 in fp32, fp16 and bf16, but σ' there is
# about 2·10⁻⁹, so gradient descent cannot move a block started this way.
SATURATED_GATE_BIAS = 20.0
# The trainable identity: the gate starts at σ(0) = 0.5, where σ' = 0.25, and a constant gain of
# 1/σ(0) = 2 puts the factor back. Both are exact in every float type, so the gate is exactly 1.
TRAINABLE_GATE_BIAS = 0.0
TRAINABLE_GATE_GAIN = 2.0
# Its hidden layer's bias. With W2 = 0 the output does not depend on it, but at b1 = 0 a hidden unit
# whose W1 row meets the pooled (often non-negative, after ReLU) features at a pre-activation ≤ 0 is
# dead under ReLU and never gets a gradient; b1 = 1 keeps the units alive at the start (0.1 and
# below were not enough: on a small conv classifier only fc2's bias moved in 3 epochs).
TRAINABLE_HIDDEN_BIAS = 1.0


@dataclasses.dataclass(frozen=True)
class Activation:
    """The inner activation between the two excitation layers."""

    op_type: str = "Relu"  # Relu, LeakyRelu, HardSwish, SiLU (written as x·Sigmoid(x)), PRelu
    alpha: float | None = None  # LeakyRelu's slope
    slope: np.ndarray | None = dataclasses.field(default=None, compare=False)  # PRelu's slope

    def describe(self) -> str:
        return self.op_type if self.alpha is None else f"{self.op_type}(alpha={self.alpha:g})"


@dataclasses.dataclass(frozen=True)
class Gate:
    """The gate that squashes the excitation into a per-channel scale."""

    op_type: str = "Sigmoid"  # Sigmoid or HardSigmoid
    alpha: float | None = None  # HardSigmoid: max(0, min(1, alpha·x + beta))
    beta: float | None = None
    gain: float = 1.0  # a constant the gate is multiplied by (2 in the trainable identity init)

    def describe(self) -> str:
        text = self.op_type
        if self.op_type == "HardSigmoid":
            text = f"HardSigmoid(alpha={self.alpha:g}, beta={self.beta:g})"
        return text if self.gain == 1 else f"{self.gain:g}·{text}"


RELU = Activation("Relu")
SIGMOID = Gate("Sigmoid")


class LayerWeights(typing.NamedTuple):
    """One excitation layer in PyTorch's Linear layout; every builder and matcher speaks it."""

    weight: np.ndarray  # out × in
    bias: np.ndarray  # out

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])


@dataclasses.dataclass(frozen=True)
class SEWeights:
    """The two excitation layers in PyTorch's Linear layout (weight is out × in), and the gate's gain."""

    fc1_weight: np.ndarray  # S × C
    fc1_bias: np.ndarray  # S
    fc2_weight: np.ndarray  # C × S
    fc2_bias: np.ndarray  # C
    gate_gain: float = 1.0

    KEYS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    # Optional in a weights file; written only for a gate with a gain, so plain blocks keep four keys.
    GAIN_KEY = "gate.gain"

    @property
    def channels(self) -> int:
        return int(self.fc1_weight.shape[1])

    @property
    def squeeze_channels(self) -> int:
        return int(self.fc1_weight.shape[0])

    def layers(self) -> tuple[LayerWeights, LayerWeights]:
        return LayerWeights(self.fc1_weight, self.fc1_bias), LayerWeights(self.fc2_weight, self.fc2_bias)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = dict(zip(self.KEYS, (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)))
        if self.gate_gain != 1:
            arrays[self.GAIN_KEY] = np.array(self.gate_gain, np.float32)
        return arrays

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], *, channels: int, squeeze_channels: int | None, where: str
    ) -> SEWeights:
        """Weights from arrays keyed like `arrays()`, checked against the block they go into.

        1×1 conv weights (S × C × 1 × 1) are accepted for Linear ones. `squeeze_channels=None` takes
        the width from the arrays.
        """
        missing = [key for key in cls.KEYS if key not in arrays]
        if missing:
            raise SeOnnxError(f"{where}: missing {', '.join(missing)}")
        s = int(np.shape(arrays["fc1.weight"])[0]) if squeeze_channels is None else squeeze_channels
        expected = {
            "fc1.weight": (s, channels),
            "fc1.bias": (s,),
            "fc2.weight": (channels, s),
            "fc2.bias": (channels,),
        }
        shaped = shaped_arrays(arrays, expected, where)
        fc1_weight, fc1_bias, fc2_weight, fc2_bias = (shaped[key] for key in cls.KEYS)
        return cls(fc1_weight, fc1_bias, fc2_weight, fc2_bias, gate_gain=gate_gain_of(arrays, where))

    @classmethod
    def identity(cls, channels: int, squeeze_channels: int, rng: np.random.Generator) -> SEWeights:
        """A trainable block whose gate is exactly 1: W2 = 0, b2 = 0 and a gain of 1/σ(0) = 2.

        The gate sits where σ' = 0.25, so gradients reach W2 and b2; the hidden units start alive
        (b1 = 1), so that W2's gradient is not zero, and W1 keeps a random init so that gradients
        also reach W1 once W2 moves.
        """
        return cls._constant_gate(
            channels, squeeze_channels, rng, TRAINABLE_GATE_BIAS, TRAINABLE_GATE_GAIN, hidden_bias=TRAINABLE_HIDDEN_BIAS
        )

    @classmethod
    def saturated(cls, channels: int, squeeze_channels: int, rng: np.random.Generator) -> SEWeights:
        """A plain block (no gain) whose gate is exactly 1: W2 = 0 and b2 = 20. Not trainable: σ' ≈ 2·10⁻⁹."""
        return cls._constant_gate(channels, squeeze_channels, rng, SATURATED_GATE_BIAS, 1.0)

    @classmethod
    def _constant_gate(
        cls,
        channels: int,
        squeeze_channels: int,
        rng: np.random.Generator,
        bias: float,
        gain: float,
        *,
        hidden_bias: float = 0.0,
    ) -> SEWeights:
        fc1 = pytorch_linear_init(squeeze_channels, channels, rng)
        return cls(
            fc1_weight=fc1[0],
            fc1_bias=np.full(squeeze_channels, hidden_bias, np.float32),
            fc2_weight=np.zeros((channels, squeeze_channels), np.float32),
            fc2_bias=np.full(channels, bias, np.float32),
            gate_gain=gain,
        )

    @classmethod
    def random(cls, channels: int, squeeze_channels: int, rng: np.random.Generator) -> SEWeights:
        """PyTorch's default Linear init: U(-1/√fan_in, 1/√fan_in) for weight and bias."""
        return cls(
            *pytorch_linear_init(squeeze_channels, channels, rng),
            *pytorch_linear_init(channels, squeeze_channels, rng),
        )


def shaped_arrays(
    arrays: typing.Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]], where: str
) -> dict[str, np.ndarray]:
    """`arrays[key]` in each `expected` shape; trailing unit dims (a 1×1 conv's weight where a Linear
    one is expected) are dropped, any other difference is an error naming `where`."""
    shaped = {}
    for key, shape in expected.items():
        array = np.asarray(arrays[key])
        trailing_ones = array.ndim > len(shape) and all(d == 1 for d in array.shape[len(shape) :])
        if trailing_ones:
            array = array.reshape(array.shape[: len(shape)])
        if array.shape != shape:
            raise SeOnnxError(f"{where}: {key} has shape {tuple(np.shape(arrays[key]))}, expected {shape}")
        shaped[key] = array
    return shaped


def gate_gain_of(arrays: typing.Mapping[str, np.ndarray], where: str) -> float:
    """The gate's gain in a weights file (`SEWeights.GAIN_KEY`, 1 when absent)."""
    gain = np.asarray(arrays.get(SEWeights.GAIN_KEY, 1.0))
    if gain.size != 1:
        raise SeOnnxError(f"{where}: {SEWeights.GAIN_KEY} has shape {gain.shape}, expected a scalar")
    return float(gain.item())


def pytorch_linear_init(out_features: int, in_features: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    bound = 1.0 / math.sqrt(in_features)
    weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32)
    bias = rng.uniform(-bound, bound, out_features).astype(np.float32)
    return weight, bias


def squeeze_width(channels: int, ratio: float, min_squeeze: int = 1, divisor: int | None = None) -> int:
    """max(min_squeeze, round(C·ratio)), then rounded to a multiple of `divisor` as timm does.

    timm's rule: the nearest multiple of `divisor`, not below `min_squeeze` (or the divisor), and
    never below 90 % of the unrounded width.
    """
    width = max(min_squeeze, round(channels * ratio))
    if divisor:
        floor = max(min_squeeze, divisor)
        rounded = max(floor, int(width + divisor / 2) // divisor * divisor)
        if rounded < 0.9 * width:
            rounded += divisor
        width = rounded
    return width


# How the excitation is laid out: "gemm" (ReduceMean → Gemm → … → Unsqueeze → Mul, the insertion
# pass's form) or "conv" (GlobalAveragePool → 1×1 Conv → … → Mul, the form torchvision exports).
LAYOUTS = ("gemm", "conv")
# The function that the fuse pass's function form calls, one overload per kind of block.
SE_DOMAIN = "se_onnx"
FUNCTION_NAME = "SqueezeExcitation"
# The attributes a function-form block's body refers to (see `build_se_function_body`).
GATE_ALPHA, GATE_BETA, ACTIVATION_ALPHA = "gate_alpha", "gate_beta", "activation_alpha"


@dataclasses.dataclass
class BuiltBlock:
    """What a builder made; the caller adds the nodes and initializers to a graph.

    A function body has no initializers: its weights are the body's `inputs` after the feature
    map, and `arguments` holds the arrays (in the block's dtype) that a call passes for them.
    """

    nodes: list[ir.Node]
    initializers: list[ir.Value]
    output: ir.Value
    inputs: list[ir.Value] = dataclasses.field(default_factory=list)
    arguments: list[np.ndarray] = dataclasses.field(default_factory=list)


def build_se_block(
    x: ir.Value,
    weights: SEWeights,
    *,
    spatial_rank: int,
    opset: int,
    dtype: ir.DataType,
    names: NameScope,
    activation: Activation = RELU,
    gate: Gate = SIGMOID,
    channels_last: bool = False,
) -> BuiltBlock:
    """Build the canonical SE block over the N×C×spatial (or, `channels_last`, N×spatial×C)
    feature map `x`.

    Nodes are valid at `opset` (ReduceMean's axes move to an input at 18, Unsqueeze's at 13), the
    weights are cast to `dtype`, and every name comes from `names`. The batch dim stays symbolic.
    The gate's gain is the weights' `gate_gain`.
    """
    gate = dataclasses.replace(gate, gain=weights.gate_gain)
    return build_excitation(
        x,
        weights.layers(),
        spatial_rank=spatial_rank,
        opset=opset,
        dtype=dtype,
        names=names,
        activation=activation,
        gate=gate,
        channels_last=channels_last,
    )


def build_excitation(
    x: ir.Value,
    layers: Sequence[LayerWeights],
    *,
    spatial_rank: int,
    opset: int,
    dtype: ir.DataType,
    names: NameScope,
    activation: Activation | None,
    gate: Gate,
    layout: str = "gemm",
    channels_last: bool = False,
) -> BuiltBlock:
    """An SE block with one or two excitation layers (weight out × in, bias out) in `layout`.

    Two layers have `activation` between them; one layer (the "effective SE" variant) has none.
    `channels_last`: `x` is N×spatial×C (an NHWC island, as TensorFlow exports run between
    Transposes); the squeeze averages axes 1…rank and the gate broadcasts on the last axis.
    """
    tape = Tape(names, dtype)
    return _build(tape, x, layers, spatial_rank, opset, activation, gate, layout, channels_last)


def build_se_function_body(
    layers: Sequence[LayerWeights],
    *,
    spatial_rank: int,
    opset: int,
    dtype: ir.DataType,
    activation: Activation | None,
    gate: Gate,
    channels_last: bool = False,
) -> BuiltBlock:
    """The body of a function that computes one SE block in the gemm layout.

    Its inputs are the feature map, then each layer's weight and bias (and PRelu's slope); constant
    axes are Constant nodes (a function has no initializers); HardSigmoid's alpha/beta and
    LeakyRelu's alpha refer to the call's attributes `gate_alpha`, `gate_beta`, `activation_alpha`.
    """
    tape = Tape(NameScope(set()), dtype, function=True)
    x = tape.input("X", None)
    return _build(tape, x, layers, spatial_rank, opset, activation, gate, "gemm", channels_last)


def _build(
    block: Tape,
    x: ir.Value,
    layers: Sequence[LayerWeights],
    spatial_rank: int,
    opset: int,
    activation: Activation | None,
    gate: Gate,
    layout: str,
    channels_last: bool,
) -> BuiltBlock:
    if opset < MIN_OPSET:
        raise SeOnnxError(f"opset {opset} is older than {MIN_OPSET}, the oldest se-onnx supports")
    if layout not in LAYOUTS:
        raise SeOnnxError(f"unknown SE block layout {layout!r}")
    if len(layers) not in (1, 2) or (len(layers) == 2) != (activation is not None):
        raise SeOnnxError("an SE block has two excitation layers with an activation, or one without")
    conv = layout == "conv"
    if conv and channels_last:
        raise SeOnnxError("the conv layout needs a channels-first feature map")
    batch = x.shape[0] if x.shape is not None and len(x.shape) > 0 else None
    unit_dims = [1] * spatial_rank if conv else []
    first_spatial_axis = 1 if channels_last else 2
    spatial_axes = list(range(first_spatial_axis, first_spatial_axis + spatial_rank))

    def shape(channels: int) -> ir.Shape:
        return ir.Shape([batch, int(channels), *unit_dims])

    channels = int(layers[0][0].shape[1])
    if conv:
        value = block.op("GlobalAveragePool", [x], None, "squeeze", shape(channels))
    elif opset >= REDUCE_MEAN_AXES_AS_INPUT:
        axes = block.constant("squeeze_axes", np.array(spatial_axes, np.int64), exact=True)
        value = block.op("ReduceMean", [x, axes], {"keepdims": 0}, "squeeze", shape(channels))
    else:
        value = block.op("ReduceMean", [x], {"axes": spatial_axes, "keepdims": 0}, "squeeze", shape(channels))

    stems = ("fc1", "fc2") if len(layers) == 2 else ("fc",)
    for index, ((weight, bias), stem) in enumerate(zip(layers, stems)):
        if index == 1:
            assert activation is not None
            value = activate(block, value, activation, shape(weight.shape[1]), unit_dims, opset)
        out_features = int(weight.shape[0])
        if conv:
            weight = np.reshape(weight, (out_features, weight.shape[1], *unit_dims))
        operands = [block.constant(f"{stem}_weight", weight), block.constant(f"{stem}_bias", bias)]
        op, attributes = ("Conv", None) if conv else ("Gemm", {"transB": 1})
        value = block.op(op, [value, *operands], attributes, stem, shape(out_features))

    if gate.op_type == "HardSigmoid":
        hard_sigmoid = {
            "alpha": block.attribute("alpha", GATE_ALPHA, gate.alpha),
            "beta": block.attribute("beta", GATE_BETA, gate.beta),
        }
        scale = block.op("HardSigmoid", [value], hard_sigmoid, "gate", shape(channels))
    elif gate.op_type == "Sigmoid":
        scale = block.op("Sigmoid", [value], None, "gate", shape(channels))
    else:
        raise SeOnnxError(f"unsupported SE gate {gate.op_type!r}")
    if gate.gain != 1:
        gain = block.constant("gate_gain", np.array(gate.gain, np.float32))
        scale = block.op("Mul", [scale, gain], None, "gate_gain", shape(channels))

    if not conv:
        unit_spatial = [1] * spatial_rank
        broadcast = ir.Shape([batch, *unit_spatial, channels] if channels_last else [batch, channels, *unit_spatial])
        if opset >= UNSQUEEZE_AXES_AS_INPUT:
            axes = block.constant("unsqueeze_axes", np.array(spatial_axes, np.int64), exact=True)
            scale = block.op("Unsqueeze", [scale, axes], None, "unsqueeze", broadcast)
        else:
            scale = block.op("Unsqueeze", [scale], {"axes": spatial_axes}, "unsqueeze", broadcast)
    output_shape = ir.Shape(list(x.shape)) if x.shape is not None else None
    output = block.op("Mul", [x, scale], None, "scale", output_shape)
    return BuiltBlock(block.nodes, block.initializers, output, block.inputs, block.arguments)


def activate(
    block: Tape, hidden: ir.Value, activation: Activation, shape: ir.Shape, unit_dims: list[int], opset: int
) -> ir.Value:
    if activation.op_type == "Relu":
        return block.op("Relu", [hidden], None, "act", shape)
    if activation.op_type == "LeakyRelu":
        alpha = block.attribute("alpha", ACTIVATION_ALPHA, activation.alpha)
        return block.op("LeakyRelu", [hidden], {"alpha": alpha}, "act", shape)
    if activation.op_type == "HardSwish" and opset >= HARD_SWISH_OPSET:
        return block.op("HardSwish", [hidden], None, "act", shape)
    if activation.op_type == "HardSwish":
        attributes = {"alpha": 1 / 6, "beta": 0.5}
        gate = block.op("HardSigmoid", [hidden], attributes, "act_hardsigmoid", shape)
        return block.op("Mul", [hidden, gate], None, "act", shape)
    if activation.op_type == "PRelu":
        # A per-channel slope broadcasts over N × S (gemm) or N × S × 1… (conv).
        slope = np.asarray(activation.slope)
        slope = slope.reshape(-1, *unit_dims) if slope.size > 1 else slope.reshape(1)
        return block.op("PRelu", [hidden, block.constant("act_slope", slope)], None, "act", shape)
    if activation.op_type == "SiLU":
        sigmoid = block.op("Sigmoid", [hidden], None, "act_sigmoid", shape)
        return block.op("Mul", [hidden, sigmoid], None, "act", shape)
    raise SeOnnxError(f"unsupported SE activation {activation.op_type!r}")


class Tape:
    """Records one block's nodes and initializers on an onnx-ir tape, naming each from the block's
    scope and typing each output with the block's dtype.

    In a function body (`function=True`) weights become body inputs, exact constants become
    Constant nodes, and attributes that a call may set become references to the call's attributes.
    """

    def __init__(self, names: NameScope, dtype: ir.DataType, *, function: bool = False) -> None:
        self.names = names
        self.dtype = dtype
        self.function = function
        self.tape = ir.tape.Tape()
        self.inputs: list[ir.Value] = []
        self.arguments: list[np.ndarray] = []

    @property
    def nodes(self) -> list[ir.Node]:
        return list(self.tape.nodes)

    @property
    def initializers(self) -> list[ir.Value]:
        return list(self.tape.initializers)

    def input(self, stem: str, array: np.ndarray | None) -> ir.Value:
        value = ir.Value(name=self.names(stem))
        self.inputs.append(value)
        if array is not None:
            self.arguments.append(array)
        return value

    def constant(self, stem: str, array: np.ndarray, *, exact: bool = False) -> ir.Value:
        if not exact:
            array = np.asarray(array, dtype=np.float32).astype(self.dtype.numpy())
        if self.function and not exact:
            return self.input(stem, array)
        name = self.names(stem)
        # ir.Tensor, not ir.tensor(): the array already has its final dtype, and ir.tensor's
        # conversion checks were a third of the insertion pass's time.
        tensor = ir.Tensor(array, name=name)
        if self.function:
            output = self.tape.op("Constant", [], {"value": tensor}, name=self.names(f"{stem}_constant"))
            output.name = name
            return output
        return self.tape.initializer(tensor)

    def attribute(self, name: str, call_attribute: str, value: float | None) -> ir.Attr | float | None:
        """A float attribute: its value, or in a function body a reference to the call's."""
        if self.function:
            return ir.RefAttr(name, call_attribute, ir.AttributeType.FLOAT)
        return value

    def op_multi(
        self, op_type: str, inputs: list[ir.Value], attributes: dict | None, stem: str, shapes: Sequence[ir.Shape]
    ) -> list[ir.Value]:
        """Add a node with one output per shape (Split), typed as `op` types its one output."""
        outputs = self.tape.op_multi_out(op_type, inputs, attributes, num_outputs=len(shapes), name=self.names(stem))
        for index, (output, shape) in enumerate(zip(outputs, shapes)):
            output.name = self.names(f"{stem}_output_{index}")
            output.type = ir.TensorType(self.dtype)
            output.shape = shape
        return list(outputs)

    def op(
        self,
        op_type: str,
        inputs: list[ir.Value],
        attributes: dict | None,
        stem: str,
        shape: ir.Shape | None,
    ) -> ir.Value:
        """Add a node; its output has the block's dtype and `shape` (None: unknown)."""
        output = self.tape.op(op_type, inputs, attributes, name=self.names(stem))
        output.name = self.names(f"{stem}_output")
        if not self.function:  # a function body is generic over its callers' types
            output.type = ir.TensorType(self.dtype)
            output.shape = shape
        return output
