"""The canonical SE block: its weights, and the ONNX nodes that compute it at any opset from 11.

squeeze (ReduceMean over the spatial axes) → Gemm (C → S) → activation → Gemm (S → C) → gate
→ Unsqueeze back to the feature map's rank → Mul with the feature map. The insertion pass writes
this form, and fusing rewrites the blocks it finds into it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.naming import NameScope

# Opsets at which an op moved a list attribute to an input.
REDUCE_MEAN_AXES_AS_INPUT = 18
UNSQUEEZE_AXES_AS_INPUT = 13
MIN_OPSET = 11

# sigmoid(IDENTITY_GATE_BIAS) rounds to exactly 1 in fp32, fp16 and bf16.
IDENTITY_GATE_BIAS = 20.0


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

    def describe(self) -> str:
        if self.op_type == "HardSigmoid":
            return f"HardSigmoid(alpha={self.alpha:g}, beta={self.beta:g})"
        return self.op_type


RELU = Activation("Relu")
SIGMOID = Gate("Sigmoid")


@dataclasses.dataclass(frozen=True)
class SEWeights:
    """The two excitation layers in PyTorch's Linear layout (weight is out × in)."""

    fc1_weight: np.ndarray  # S × C
    fc1_bias: np.ndarray  # S
    fc2_weight: np.ndarray  # C × S
    fc2_bias: np.ndarray  # C

    KEYS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")

    @property
    def channels(self) -> int:
        return int(self.fc1_weight.shape[1])

    @property
    def squeeze_channels(self) -> int:
        return int(self.fc1_weight.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(self.KEYS, (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)))

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
        shaped = {}
        for key, shape in expected.items():
            array = np.asarray(arrays[key])
            trailing_ones = array.ndim > len(shape) and all(d == 1 for d in array.shape[len(shape):])
            if trailing_ones:
                array = array.reshape(array.shape[: len(shape)])
            if array.shape != shape:
                raise SeOnnxError(
                    f"{where}: {key} has shape {tuple(np.shape(arrays[key]))}, expected {shape}"
                )
            shaped[key] = array
        return cls(*(shaped[key] for key in cls.KEYS))

    @classmethod
    def identity(cls, channels: int, squeeze_channels: int, rng: np.random.Generator) -> SEWeights:
        """A block whose gate is exactly 1: W2 = 0 and a large b2, so the model is unchanged.

        W1 keeps a random init so that fine-tuning has a live path through the activation.
        """
        fc1 = _pytorch_linear_init(squeeze_channels, channels, rng)
        return cls(
            fc1_weight=fc1[0],
            fc1_bias=np.zeros(squeeze_channels, np.float32),
            fc2_weight=np.zeros((channels, squeeze_channels), np.float32),
            fc2_bias=np.full(channels, IDENTITY_GATE_BIAS, np.float32),
        )

    @classmethod
    def random(cls, channels: int, squeeze_channels: int, rng: np.random.Generator) -> SEWeights:
        """PyTorch's default Linear init: U(-1/√fan_in, 1/√fan_in) for weight and bias."""
        return cls(
            *_pytorch_linear_init(squeeze_channels, channels, rng),
            *_pytorch_linear_init(channels, squeeze_channels, rng),
        )


def _pytorch_linear_init(
    out_features: int, in_features: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
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


@dataclasses.dataclass
class BuiltBlock:
    """What `build_se_block` made; the caller adds the nodes and initializers to a graph."""

    nodes: list[ir.Node]
    initializers: list[ir.Value]
    output: ir.Value


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
) -> BuiltBlock:
    """Build the canonical SE block over the N×C×spatial feature map `x`.

    Nodes are valid at `opset` (ReduceMean's axes move to an input at 18, Unsqueeze's at 13), the
    weights are cast to `dtype`, and every name comes from `names`. The batch dim stays symbolic.
    """
    if opset < MIN_OPSET:
        raise SeOnnxError(f"opset {opset} is older than {MIN_OPSET}, the oldest se-onnx supports")
    batch = x.shape[0] if x.shape is not None and len(x.shape) > 0 else None
    per_channel = ir.Shape([batch, weights.channels])
    hidden_shape = ir.Shape([batch, weights.squeeze_channels])
    block = _Tape(names, dtype)
    spatial_axes = list(range(2, 2 + spatial_rank))

    if opset >= REDUCE_MEAN_AXES_AS_INPUT:
        axes = block.constant("squeeze_axes", np.array(spatial_axes, np.int64), exact=True)
        squeezed = block.op("ReduceMean", [x, axes], {"keepdims": 0}, "squeeze", per_channel)
    else:
        attributes = {"axes": spatial_axes, "keepdims": 0}
        squeezed = block.op("ReduceMean", [x], attributes, "squeeze", per_channel)

    fc1 = [block.constant("fc1_weight", weights.fc1_weight), block.constant("fc1_bias", weights.fc1_bias)]
    hidden = block.op("Gemm", [squeezed, *fc1], {"transB": 1}, "fc1", hidden_shape)
    hidden = _activate(block, hidden, activation, hidden_shape)
    fc2 = [block.constant("fc2_weight", weights.fc2_weight), block.constant("fc2_bias", weights.fc2_bias)]
    excited = block.op("Gemm", [hidden, *fc2], {"transB": 1}, "fc2", per_channel)
    if gate.op_type == "HardSigmoid":
        attributes = {"alpha": gate.alpha, "beta": gate.beta}
        scale = block.op("HardSigmoid", [excited], attributes, "gate", per_channel)
    elif gate.op_type == "Sigmoid":
        scale = block.op("Sigmoid", [excited], None, "gate", per_channel)
    else:
        raise SeOnnxError(f"unsupported SE gate {gate.op_type!r}")

    broadcast = ir.Shape([batch, weights.channels, *([1] * spatial_rank)])
    if opset >= UNSQUEEZE_AXES_AS_INPUT:
        axes = block.constant("unsqueeze_axes", np.array(spatial_axes, np.int64), exact=True)
        scale = block.op("Unsqueeze", [scale, axes], None, "unsqueeze", broadcast)
    else:
        scale = block.op("Unsqueeze", [scale], {"axes": spatial_axes}, "unsqueeze", broadcast)
    output_shape = ir.Shape(list(x.shape)) if x.shape is not None else None
    output = block.op("Mul", [x, scale], None, "scale", output_shape)
    return BuiltBlock(block.nodes, block.initializers, output)


def _activate(block: _Tape, hidden: ir.Value, activation: Activation, shape: ir.Shape) -> ir.Value:
    if activation.op_type == "Relu":
        return block.op("Relu", [hidden], None, "act", shape)
    if activation.op_type == "LeakyRelu":
        return block.op("LeakyRelu", [hidden], {"alpha": activation.alpha}, "act", shape)
    if activation.op_type == "HardSwish":
        return block.op("HardSwish", [hidden], None, "act", shape)
    if activation.op_type == "PRelu":
        slope = block.constant("act_slope", np.asarray(activation.slope))
        return block.op("PRelu", [hidden, slope], None, "act", shape)
    if activation.op_type == "SiLU":
        sigmoid = block.op("Sigmoid", [hidden], None, "act_sigmoid", shape)
        return block.op("Mul", [hidden, sigmoid], None, "act", shape)
    raise SeOnnxError(f"unsupported SE activation {activation.op_type!r}")


class _Tape:
    """Records the nodes and initializers of one block, each named from the block's scope."""

    def __init__(self, names: NameScope, dtype: ir.DataType) -> None:
        self.names = names
        self.dtype = dtype
        self.nodes: list[ir.Node] = []
        self.initializers: list[ir.Value] = []

    def constant(self, stem: str, array: np.ndarray, *, exact: bool = False) -> ir.Value:
        if not exact:
            array = np.asarray(array, dtype=np.float32).astype(self.dtype.numpy())
        name = self.names(stem)
        tensor = ir.tensor(array, dtype=None if exact else self.dtype, name=name)
        value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.initializers.append(value)
        return value

    def op(
        self,
        op_type: str,
        inputs: list[ir.Value],
        attributes: dict | None,
        stem: str,
        shape: ir.Shape | None,
    ) -> ir.Value:
        """Add a node; its output has the block's dtype and `shape` (None: unknown)."""
        node = ir.node(op_type, inputs, attributes, name=self.names(stem), num_outputs=1)
        output = node.outputs[0]
        output.name = self.names(f"{stem}_output")
        output.type = ir.TensorType(self.dtype)
        output.shape = shape
        self.nodes.append(node)
        return output
