"""Builds conv models in the layouts TensorFlow and quantizing exporters write, for the pass tests.

- `tf_resnet`: tf2onnx's NHWC islands. The model's input is N×H×W×C; each Conv sits between a
  Transpose to NCHW and one back, and its BatchNorm (as Mul + Add by per-channel constants),
  activation and residual Adds run in NHWC. `layout="nchw"` builds the same network without the
  Transposes (BatchNorm still as Mul + Add, constants shaped C×1×1), as PyTorch exports with BN
  decomposed.
- `shared_weight_model`: one weight initializer fed to three convs (two on a residual branch).
- `keras_se_model`: an SE block written in NHWC, as tf2onnx converts Keras' squeeze-excite
  (ReduceMean over axes 1, 2 → Dense (MatMul + Add) → … → gate broadcast on the last axis).
- `keras_eca_model`: an ECA block in NHWC, as tf2onnx converts the usual Keras ECA (its Conv1D
  run as a Conv2D over a 1 × C row, between Transposes).

The QDQ models the tests quantize come from `models.builders.quantize_qdq`: ONNX Runtime's
`quantize_static` in its default QDQ format (QuantizeLinear / DequantizeLinear around each op; int8
activations and weights in ONNX Runtime 1.32), calibrated on seeded inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from models.builders import GraphBuilder, seeded_inputs

TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]
SE_SQUEEZES = ("keepdims", "reshape", "unsqueeze")


class _Graph(GraphBuilder):
    """A graph with convs as TensorFlow's and PyTorch's exporters write them: He-normal weights and a bias."""

    def conv_weight(self, cout: int, cin: int, kernel: int) -> ir.Value:
        fan_in = cin * kernel * kernel
        return self.const("conv_w", self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin, kernel, kernel)))

    def conv(
        self, x: ir.Value, cin: int, cout: int, kernel: int = 3, stride: int = 1, weight: ir.Value | None = None
    ) -> ir.Value:
        inputs = [
            x,
            weight or self.conv_weight(cout, cin, kernel),
            self.const("conv_b", self.rng.normal(0, 0.01, cout)),
        ]
        return self.op("Conv", inputs, "conv", kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[kernel // 2] * 4)


class _Layers:
    """Conv layers in one layout: "nhwc" wraps each Conv in Transposes (tf2onnx), "nchw" does not."""

    def __init__(self, g: _Graph, layout: str) -> None:
        self.g = g
        self.nhwc = layout == "nhwc"

    def conv(
        self, x: ir.Value, cin: int, cout: int, kernel: int = 3, stride: int = 1, weight: ir.Value | None = None
    ) -> ir.Value:
        g = self.g
        if self.nhwc:
            x = g.op("Transpose", [x], "to_nchw", perm=TO_NCHW)
        h = g.conv(x, cin, cout, kernel, stride, weight)
        return g.op("Transpose", [h], "to_nhwc", perm=TO_NHWC) if self.nhwc else h

    def batch_norm(self, x: ir.Value, channels: int) -> ir.Value:
        """Inference BatchNorm folded to y = x·scale + shift, per channel, as exporters write it."""
        g = self.g
        shape = (channels,) if self.nhwc else (channels, 1, 1)
        scale = g.const("bn_scale", g.rng.uniform(0.5, 1.5, shape))
        shift = g.const("bn_shift", g.rng.normal(0, 0.1, shape))
        return g.op("Add", [g.op("Mul", [x, scale], "bn_mul"), shift], "bn_add")

    def conv_bn(
        self, x: ir.Value, cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True
    ) -> ir.Value:
        h = self.batch_norm(self.conv(x, cin, cout, kernel, stride), cout)
        return self.g.op("Relu", [h], "relu") if relu else h


def tf_resnet(opset: int = 13, dtype: str = "float32", layout: str = "nhwc") -> onnx.ModelProto:
    """Stem, an identity-shortcut residual block, a downsampling block with a projection shortcut,
    then a global mean and a MatMul classifier; 8×8 input, batch "N"."""
    g = _Graph(dtype=dtype, opset=opset, seed=0)
    layers = _Layers(g, layout)
    x = g.input("x", ["N", 8, 8, 3] if layers.nhwc else ["N", 3, 8, 8])
    h = layers.conv_bn(x, 3, 8)
    for cin, cout, stride in ((8, 8, 1), (8, 16, 2)):
        branch = layers.conv_bn(h, cin, cout, stride=stride)
        branch = layers.conv_bn(branch, cout, cout, relu=False)
        shortcut = h if stride == 1 else layers.conv_bn(h, cin, cout, kernel=1, stride=stride, relu=False)
        h = g.op("Relu", [g.op("Add", [branch, shortcut], "residual")], "relu")
    pooled = g.mean(h, [1, 2] if layers.nhwc else [2, 3], "pool", keepdims=0)
    y = g.op("MatMul", [pooled, g.const("fc_w", g.rng.normal(0, 0.25, (16, 10)))], "fc")
    return g.model(f"tf_resnet_{layout}", [x], [g.output(y, "y", ["N", 10])])


def shared_weight_model(opset: int = 13, dtype: str = "float32") -> onnx.ModelProto:
    """x → conv → Relu → [conv(W) → Relu → conv(W)] + shortcut → Relu → conv(W) → y: one weight W
    (8×8×3×3) feeds three convs, each with its own bias."""
    g = _Graph(dtype=dtype, opset=opset, seed=0)
    x = g.input("x", ["N", 3, 6, 6])
    h = g.op("Relu", [g.conv(x, 3, 8)], "relu")
    shared = g.conv_weight(8, 8, 3)
    branch = g.op("Relu", [g.conv(h, 8, 8, weight=shared)], "relu")
    branch = g.conv(branch, 8, 8, weight=shared)
    h = g.op("Relu", [g.op("Add", [branch, h], "residual")], "relu")
    y = g.conv(h, 8, 8, weight=shared)
    return g.model("shared_weight", [x], [g.output(y, "y", ["N", 8, 6, 6])])


def keras_se_model(
    opset: int = 13, dtype: str = "float32", squeeze: str = "keepdims", gate: str = "Sigmoid", blocks: int = 1
) -> onnx.ModelProto:
    """x (N×6×6×3) → Conv → Relu → `blocks` SE blocks in NHWC → Conv → y, each conv between Transposes.

    `squeeze`: "keepdims" (ReduceMean keeps N×1×1×C; the Dense layers and the gate work on it and
    the gate broadcasts over H, W), "reshape" (N×C, the gate Reshaped to N×1×1×C) or "unsqueeze"
    (N×C, the gate Unsqueezed on axes 1, 2). SE weights come from their own seeded stream, so
    `blocks=0` is the same model with its SE blocks stripped. SE nodes are named "se<i>/…".
    """
    if squeeze not in SE_SQUEEZES:
        raise ValueError(f"squeeze must be one of {SE_SQUEEZES}")
    g = _Graph(dtype=dtype, opset=opset, seed=1)
    se = g.stream(seed=2)
    layers = _Layers(g, "nhwc")
    c, s = 8, 4
    x = g.input("x", ["N", 6, 6, 3])
    h = g.op("Relu", [layers.conv(x, 3, c)], "relu")
    for index in range(blocks):
        prefix = f"se{index}/"
        block_input = h
        h = g.mean(block_input, [1, 2], prefix + "mean", keepdims=int(squeeze == "keepdims"))
        for stem, (n_in, n_out) in (("fc1", (c, s)), ("fc2", (s, c))):
            weight = g.const(prefix + stem + "_w", se.rng.uniform(-2, 2, (n_in, n_out)) / np.sqrt(n_in))
            h = g.op("MatMul", [h, weight], prefix + stem)
            bias = g.const(prefix + stem + "_b", se.rng.uniform(-0.5, 0.5, n_out))
            h = g.op("Add", [h, bias], prefix + stem + "_add")
            if stem == "fc1":
                h = g.op("Relu", [h], prefix + "relu")
        h = g.op(gate, [h], prefix + "gate")
        if squeeze == "reshape":
            h = g.op(
                "Reshape",
                [h, g.const(prefix + "shape", np.array([-1, 1, 1, c], np.int64), exact=True)],
                prefix + "reshape",
            )
        elif squeeze == "unsqueeze":
            h = g.unsqueeze(h, [1, 2], prefix + "unsqueeze")
        h = g.op("Mul", [block_input, h], prefix + "scale")
    y = layers.conv(h, c, c, kernel=1)
    return g.model("keras_se", [x], [g.output(y, "y", ["N", 6, 6, c])])


def keras_eca_model(opset: int = 13, blocks: int = 1) -> onnx.ModelProto:
    """x (N×6×6×3) → Conv → Relu → `blocks` ECA blocks in NHWC → Conv → y, as tf2onnx converts the
    usual Keras ECA: GlobalAveragePooling2D (ReduceMean over axes 1, 2) → Reshape (N, C, 1) →
    Conv1D (1 filter, k = 3, "same", no bias: Unsqueeze → Transpose → Conv 1×1×1×k → Transpose →
    Squeeze, as TensorFlow runs a Conv1D as a Conv2D) → Sigmoid → Reshape (N, 1, 1, C) → Mul.
    ECA weights come from their own stream, so `blocks=0` is the same model without them; ECA
    nodes are named "eca<i>/…"."""
    g = _Graph(opset=opset, seed=1)
    eca = g.stream(seed=2)
    layers = _Layers(g, "nhwc")
    c = 8
    x = g.input("x", ["N", 6, 6, 3])
    h = g.op("Relu", [layers.conv(x, 3, c)], "relu")
    for index in range(blocks):
        prefix = f"eca{index}/"
        pooled = g.mean(h, [1, 2], prefix + "mean", keepdims=0)
        row = g.op("Reshape", [pooled, g.const(prefix + "row", np.array([-1, c, 1]), exact=True)], prefix + "reshape")
        row = g.op("Transpose", [g.unsqueeze(row, [1], prefix + "expand_dims")], prefix + "to_nchw", perm=TO_NCHW)
        weight = g.const(prefix + "conv_w", eca.rng.uniform(-1, 1, (1, 1, 1, 3)))
        y = g.op("Conv", [row, weight], prefix + "conv", kernel_shape=[1, 3], pads=[0, 1, 0, 1])
        y = g.op("Transpose", [y], prefix + "to_nhwc", perm=TO_NHWC)
        axes = g.const(prefix + "squeeze_axes", np.array([1]), exact=True)
        y = g.op(
            "Squeeze", [y, axes] if opset >= 13 else [y], prefix + "squeeze", **({} if opset >= 13 else {"axes": [1]})
        )
        gate = g.op("Sigmoid", [y], prefix + "sigmoid")
        shape = g.const(prefix + "gate_shape", np.array([-1, 1, 1, c]), exact=True)
        h = g.op("Mul", [h, g.op("Reshape", [gate, shape], prefix + "gate")], prefix + "scale")
    y = layers.conv(h, c, c, kernel=1)
    return g.model("keras_eca", [x], [g.output(y, "y", ["N", 6, 6, c])])


def calibration_inputs(
    model: onnx.ModelProto, batches: int = 4, batch: int = 2, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Seeded N(0, 1) inputs for the model's one input, batch `batch`."""
    return seeded_inputs(model, batch=batch, seed=seed, count=batches)
