"""The attention blocks that came after SE — ECA, CBAM, coordinate attention — as ONNX nodes at any
opset from 11, with their weights, a trainable identity init and PyTorch's default init.

    eca    x → GlobalAveragePool → Reshape (N, 1, C) → Conv1d (k; a bias only when the weights have
           one) → Sigmoid → Reshape (N, C, 1…) → Mul(x, ·)
    cbam   channel: x → GlobalAveragePool and GlobalMaxPool → one shared MLP (1×1 Conv → Relu →
           1×1 Conv) each → Add → Sigmoid → Mul(x, ·) = x′; spatial: x′ → ReduceMean and ReduceMax
           over C → Concat → Conv k×k (2 → 1) → Sigmoid → Mul(x′, ·)
    coord  x → ReduceMean over W (N, C, H, 1) and over H, Transposed (N, C, W, 1) → Concat on axis 2
           → 1×1 Conv (C → M) → HardSwish → Split [H, W] → 1×1 Conv (M → C) → Sigmoid on each
           (the W half Transposed back) → Mul(Mul(x, a_w), a_h)

Each gate is a Sigmoid, times the weights' `gate_gain` when it is not 1 (the trainable identity's
2, as in `se_onnx.ir.se_block`). The builders share the SE builder's tape, activations and init.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.naming import NameScope
from se_onnx.ir.opset import MIN_OPSET, REDUCE_MAX_AXES_AS_INPUT, REDUCE_MEAN_AXES_AS_INPUT, SPLIT_AS_INPUT
from se_onnx.ir.se_block import (
    TRAINABLE_GATE_GAIN,
    TRAINABLE_HIDDEN_BIAS,
    Activation,
    BuiltBlock,
    SEWeights,
    Tape,
    activate,
    gate_gain_of,
    pytorch_linear_init,
    shaped_arrays,
)

# Every block kind se-onnx writes and finds; "se" is `se_onnx.ir.se_block`'s.
KINDS = ("se", "eca", "cbam", "coord")
KIND_NAMES = {"se": "SE", "eca": "ECA", "cbam": "CBAM", "coord": "coordinate attention"}
CBAM_SPATIAL_KERNEL = 7
# The one weight a kind may have or not: the bias of ECA's conv.
ECA_BIAS_KEY = "conv.bias"
# Coordinate attention's hidden width is max(8, C·ratio) (the paper's mip = max(8, C // 32)).
COORD_MIN_HIDDEN = 8
# The paper's h_swish between the shared conv and the two gate convs.
COORD_ACTIVATION = Activation("HardSwish")
CBAM_ACTIVATION = Activation("Relu")
# The kinds whose blocks need a 2-D (N×C×H×W) feature map: a 2-D spatial conv, H and W pooled apart.
IMAGE_KINDS = frozenset({"cbam", "coord"})


def eca_kernel(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size, t = |log2(C)/γ + b/γ|, made odd as the paper's code does it:
    truncated, and an even t becomes t + 1 (C = 64 → 3, 256 → 5, 512 → 5)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def _layout(kind: str, channels: int, hidden: int, kernel: int, *, bias: bool = False) -> dict[str, tuple[int, ...]]:
    """A kind's weights, keyed as `export-weights` writes them: 1×1 convs in PyTorch's Linear layout
    (out × in), ECA's conv as a Conv1d's (1 × 1 × k, and its bias with `bias`: timm's has none,
    Paddle's and a Conv1d(bias=True) one), CBAM's spatial conv as a Conv2d's."""
    if kind == "eca":
        return {"conv.weight": (1, 1, kernel), **({"conv.bias": (1,)} if bias else {})}
    if kind == "cbam":
        return {
            "fc1.weight": (hidden, channels),
            "fc1.bias": (hidden,),
            "fc2.weight": (channels, hidden),
            "fc2.bias": (channels,),
            "spatial.weight": (1, 2, kernel, kernel),
            "spatial.bias": (1,),
        }
    if kind == "coord":
        return {
            "conv1.weight": (hidden, channels),
            "conv1.bias": (hidden,),
            "conv_h.weight": (channels, hidden),
            "conv_h.bias": (channels,),
            "conv_w.weight": (channels, hidden),
            "conv_w.bias": (channels,),
        }
    raise SeOnnxError(f"unknown attention block kind {kind!r}")


@dataclasses.dataclass(frozen=True)
class AttentionWeights:
    """An ECA, CBAM or coordinate-attention block's weights, keyed as `_layout` says, and the gain
    of its gates (each of a block's gates has the same one)."""

    kind: str
    tensors: Mapping[str, np.ndarray]
    gate_gain: float = 1.0

    @property
    def hidden(self) -> int | None:
        """CBAM's MLP width or coordinate attention's M; None for ECA."""
        key = {"cbam": "fc1.weight", "coord": "conv1.weight"}.get(self.kind)
        return None if key is None else int(self.tensors[key].shape[0])

    @property
    def kernel(self) -> int | None:
        """ECA's and CBAM's spatial conv's kernel size; None for coordinate attention."""
        key = {"eca": "conv.weight", "cbam": "spatial.weight"}.get(self.kind)
        return None if key is None else int(self.tensors[key].shape[-1])

    @property
    def output_range(self) -> float:
        """The largest factor the block can scale its input by: the product of its gates' gains."""
        return self.gate_gain if self.kind == "eca" else self.gate_gain**2

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = dict(self.tensors)
        if self.gate_gain != 1:
            arrays[SEWeights.GAIN_KEY] = np.array(self.gate_gain, np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, kind: str, arrays: Mapping[str, np.ndarray], *, channels: int, where: str) -> AttentionWeights:
        """Weights from arrays keyed like `arrays()`, checked against a block over `channels`
        channels; the hidden width, the kernel and whether ECA's conv has a bias come from the
        arrays."""
        keys = _layout(kind, 1, 1, 1)
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise SeOnnxError(f"{where}: missing {', '.join(missing)} (the weights of a {KIND_NAMES[kind]} block)")
        hidden = int(np.shape(arrays[next(iter(keys))])[0]) if kind != "eca" else 1
        kernel = (
            int(np.shape(arrays["conv.weight" if kind == "eca" else "spatial.weight"])[-1]) if kind != "coord" else 1
        )
        bias = kind == "eca" and ECA_BIAS_KEY in arrays
        shaped = shaped_arrays(arrays, _layout(kind, channels, hidden, kernel, bias=bias), where)
        tensors = {key: array.astype(np.float32) for key, array in shaped.items()}
        return cls(kind, tensors, gate_gain_of(arrays, where))

    @classmethod
    def identity(
        cls, kind: str, channels: int, rng: np.random.Generator, *, hidden: int = 1, kernel: int = 1
    ) -> AttentionWeights:
        """A trainable block whose every gate is exactly 2·σ(0) = 1: each gate's last layer is zero
        (weight and bias), so its pre-activation is exactly 0 in any float type.

        σ'(0) = 0.25, so gradients reach those last layers; hidden layers (CBAM's fc1, coordinate
        attention's conv1) keep PyTorch's random weight and a bias of 1, as SE's identity does, so
        that their units start alive and the last layers' gradients are not zero.
        """
        tensors = {key: np.zeros(shape, np.float32) for key, shape in _layout(kind, channels, hidden, kernel).items()}
        first = {"cbam": "fc1", "coord": "conv1"}.get(kind)
        if first is not None:
            tensors[f"{first}.weight"] = pytorch_linear_init(hidden, channels, rng)[0]
            tensors[f"{first}.bias"] = np.full(hidden, TRAINABLE_HIDDEN_BIAS, np.float32)
        return cls(kind, tensors, TRAINABLE_GATE_GAIN)

    @classmethod
    def random(
        cls, kind: str, channels: int, rng: np.random.Generator, *, hidden: int = 1, kernel: int = 1
    ) -> AttentionWeights:
        """PyTorch's default Conv/Linear init, U(±1/√fan_in) for weight and bias (fan_in: inputs
        times kernel elements); ECA's conv has no bias."""
        tensors = {}
        for key, shape in _layout(kind, channels, hidden, kernel).items():
            if key.endswith(".weight"):
                weight, bias = pytorch_linear_init(shape[0], int(np.prod(shape[1:])), rng)
                tensors[key] = weight.reshape(shape)
                stem = key.removesuffix(".weight")
                if f"{stem}.bias" in _layout(kind, channels, hidden, kernel):
                    tensors[f"{stem}.bias"] = bias
        return cls(kind, tensors)


def build_attention_block(
    x: ir.Value,
    weights: AttentionWeights,
    *,
    spatial_rank: int,
    opset: int,
    dtype: ir.DataType,
    names: NameScope,
    channels: int,
    spatial: tuple[int, ...] | None = None,
) -> BuiltBlock:
    """Build `weights.kind`'s block over the channels-first N×C×spatial feature map `x`.

    Nodes are valid at `opset`, the weights are cast to `dtype`, every name comes from `names`, and
    the batch dim stays symbolic. CBAM and coordinate attention need a 2-D map; coordinate
    attention also needs its static H and W (`spatial`), which its Split takes.
    """
    if opset < MIN_OPSET:
        raise SeOnnxError(f"opset {opset} is older than {MIN_OPSET}, the oldest se-onnx supports")
    if weights.kind in IMAGE_KINDS and spatial_rank != 2:
        raise SeOnnxError(f"a {KIND_NAMES[weights.kind]} block needs a 2-D feature map, not {spatial_rank}-D")
    tape = Tape(names, dtype)
    batch = x.shape[0] if x.shape is not None and len(x.shape) > 0 else None
    block = _Block(tape, weights, opset, batch)
    if weights.kind == "eca":
        output = block.eca(x, channels, spatial_rank)
    elif weights.kind == "cbam":
        output = block.cbam(x, channels)
    else:
        if spatial is None or len(spatial) != 2:
            raise SeOnnxError("a coordinate-attention block needs the feature map's static height and width")
        output = block.coord(x, channels, spatial)
    return BuiltBlock(tape.nodes, tape.initializers, output)


@dataclasses.dataclass
class _Block:
    """One block's nodes on `tape`; each method returns the rescaled feature map."""

    tape: Tape
    weights: AttentionWeights
    opset: int
    batch: int | ir.SymbolicDim | None

    def shape(self, *dims: int) -> ir.Shape:
        return ir.Shape([self.batch, *dims])

    def weight(self, key: str, shape: tuple[int, ...] | None = None) -> ir.Value:
        array = self.weights.tensors[key]
        return self.tape.constant(key.replace(".", "_"), array if shape is None else array.reshape(shape))

    def gate(self, value: ir.Value, stem: str, shape: ir.Shape) -> ir.Value:
        """Sigmoid, times the gain when it is not 1."""
        value = self.tape.op("Sigmoid", [value], None, stem, shape)
        if self.weights.gate_gain != 1:
            gain = self.tape.constant(f"{stem}_gain", np.array(self.weights.gate_gain, np.float32))
            value = self.tape.op("Mul", [value, gain], None, f"{stem}_gain", shape)
        return value

    def reduce(self, op_type: str, x: ir.Value, axes: list[int], stem: str, shape: ir.Shape) -> ir.Value:
        """ReduceMean/ReduceMax keeping dims; the axes move to an input at opset 18."""
        as_input = {"ReduceMean": REDUCE_MEAN_AXES_AS_INPUT, "ReduceMax": REDUCE_MAX_AXES_AS_INPUT}[op_type]
        if self.opset >= as_input:
            axes_value = self.tape.constant(f"{stem}_axes", np.array(axes, np.int64), exact=True)
            return self.tape.op(op_type, [x, axes_value], {"keepdims": 1}, stem, shape)
        return self.tape.op(op_type, [x], {"axes": axes, "keepdims": 1}, stem, shape)

    def conv_1x1(self, value: ir.Value, stem: str, out: int, dims: tuple[int, int]) -> ir.Value:
        weight = self.weights.tensors[f"{stem}.weight"]
        operands = [self.weight(f"{stem}.weight", (*weight.shape, 1, 1)), self.weight(f"{stem}.bias")]
        return self.tape.op("Conv", [value, *operands], None, stem, self.shape(out, *dims))

    def eca(self, x: ir.Value, channels: int, spatial_rank: int) -> ir.Value:
        unit = [1] * spatial_rank
        kernel = self.weights.kernel
        assert kernel is not None
        pooled = self.tape.op("GlobalAveragePool", [x], None, "squeeze", self.shape(channels, *unit))
        row_shape = self.tape.constant("row_shape", np.array([-1, 1, channels], np.int64), exact=True)
        row = self.tape.op("Reshape", [pooled, row_shape], None, "row", self.shape(1, channels))
        # Padded by (k - 1)/2 on each side (k is odd), so the conv keeps C positions.
        pads = {"pads": [(kernel - 1) // 2] * 2}
        operands = [self.weight("conv.weight")]
        if ECA_BIAS_KEY in self.weights.tensors:
            operands.append(self.weight(ECA_BIAS_KEY))
        conv = self.tape.op("Conv", [row, *operands], pads, "conv", self.shape(1, channels))
        gate = self.gate(conv, "gate", self.shape(1, channels))
        back_shape = self.tape.constant("scale_shape", np.array([-1, channels, *unit], np.int64), exact=True)
        scale = self.tape.op("Reshape", [gate, back_shape], None, "unsqueeze", self.shape(channels, *unit))
        return self.tape.op("Mul", [x, scale], None, "scale", _same_shape(x))

    def cbam(self, x: ir.Value, channels: int) -> ir.Value:
        hidden, kernel = self.weights.hidden, self.weights.kernel
        assert hidden is not None and kernel is not None
        unit = self.shape(channels, 1, 1)
        # One set of MLP initializers, read by both branches: the MLP is shared.
        fc1 = [self.weight("fc1.weight", (hidden, channels, 1, 1)), self.weight("fc1.bias")]
        fc2 = [self.weight("fc2.weight", (channels, hidden, 1, 1)), self.weight("fc2.bias")]
        branches = []
        for pool, stem in (("GlobalAveragePool", "avg"), ("GlobalMaxPool", "max")):
            pooled = self.tape.op(pool, [x], None, f"{stem}_pool", unit)
            h = self.tape.op("Conv", [pooled, *fc1], None, f"{stem}_fc1", self.shape(hidden, 1, 1))
            h = activate(self.tape, h, CBAM_ACTIVATION, self.shape(hidden, 1, 1), [], self.opset)
            branches.append(self.tape.op("Conv", [h, *fc2], None, f"{stem}_fc2", unit))
        summed = self.tape.op("Add", branches, None, "channel_sum", unit)
        channel_scale = self.gate(summed, "channel_gate", unit)
        x1 = self.tape.op("Mul", [x, channel_scale], None, "channel_scale", _same_shape(x))

        spatial = list(x.shape[2:]) if x.shape is not None and len(x.shape) == 4 else [None, None]
        plane = ir.Shape([self.batch, 1, *spatial])
        mean = self.reduce("ReduceMean", x1, [1], "channel_mean", plane)
        peak = self.reduce("ReduceMax", x1, [1], "channel_max", plane)
        both = self.tape.op("Concat", [mean, peak], {"axis": 1}, "pooled", ir.Shape([self.batch, 2, *spatial]))
        pads = {"pads": [kernel // 2] * 4}
        operands = [self.weight("spatial.weight"), self.weight("spatial.bias")]
        spatial_map = self.tape.op("Conv", [both, *operands], pads, "spatial", plane)
        spatial_scale = self.gate(spatial_map, "spatial_gate", plane)
        return self.tape.op("Mul", [x1, spatial_scale], None, "spatial_scale", _same_shape(x))

    def coord(self, x: ir.Value, channels: int, spatial: tuple[int, ...]) -> ir.Value:
        hidden = self.weights.hidden
        assert hidden is not None
        height, width = spatial
        along_h = self.reduce("ReduceMean", x, [3], "pool_h", self.shape(channels, height, 1))
        along_w = self.reduce("ReduceMean", x, [2], "pool_w", self.shape(channels, 1, width))
        swap = {"perm": [0, 1, 3, 2]}
        along_w = self.tape.op("Transpose", [along_w], swap, "pool_w_t", self.shape(channels, width, 1))
        both = self.tape.op(
            "Concat", [along_h, along_w], {"axis": 2}, "pooled", self.shape(channels, height + width, 1)
        )
        y = self.conv_1x1(both, "conv1", hidden, (height + width, 1))
        y = activate(self.tape, y, COORD_ACTIVATION, self.shape(hidden, height + width, 1), [], self.opset)
        shapes = [self.shape(hidden, height, 1), self.shape(hidden, width, 1)]
        sizes = np.array([height, width], np.int64)
        if self.opset >= SPLIT_AS_INPUT:
            split_sizes = self.tape.constant("split_sizes", sizes, exact=True)
            y_h, y_w = self.tape.op_multi("Split", [y, split_sizes], {"axis": 2}, "split", shapes)
        else:
            y_h, y_w = self.tape.op_multi("Split", [y], {"axis": 2, "split": sizes.tolist()}, "split", shapes)
        y_w = self.tape.op("Transpose", [y_w], swap, "split_w_t", self.shape(hidden, 1, width))
        a_h = self.gate(self.conv_1x1(y_h, "conv_h", channels, (height, 1)), "gate_h", self.shape(channels, height, 1))
        a_w = self.gate(self.conv_1x1(y_w, "conv_w", channels, (1, width)), "gate_w", self.shape(channels, 1, width))
        scaled = self.tape.op("Mul", [x, a_w], None, "scale_w", _same_shape(x))
        return self.tape.op("Mul", [scaled, a_h], None, "scale_h", _same_shape(x))


def _same_shape(x: ir.Value) -> ir.Shape | None:
    return ir.Shape(list(x.shape)) if x.shape is not None else None
