"""Builds conv models in the layouts TensorFlow and quantizing exporters write, for the pass tests.

- `tf_resnet`: tf2onnx's NHWC islands. The model's input is N×H×W×C; each Conv sits between a
  Transpose to NCHW and one back, and its BatchNorm (as Mul + Add by per-channel constants),
  activation and residual Adds run in NHWC. `layout="nchw"` builds the same network without the
  Transposes (BatchNorm still as Mul + Add, constants shaped C×1×1), as PyTorch exports with BN
  decomposed.
- `shared_weight_model`: one weight initializer fed to three convs (two on a residual branch).
- `keras_se_model`: an SE block written in NHWC, as tf2onnx converts Keras' squeeze-excite
  (ReduceMean over axes 1, 2 → Dense (MatMul + Add) → … → gate broadcast on the last axis).
- `quantize_qdq`: ONNX Runtime's `quantize_static` in its default QDQ format (QuantizeLinear /
  DequantizeLinear around each op; int8 activations and weights in ONNX Runtime 1.32), calibrated on
  seeded inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]
SE_SQUEEZES = ("keepdims", "reshape", "unsqueeze")


class _Graph:
    """Nodes and initializers of one graph, with unique names and seeded weights."""

    def __init__(self, dtype: str, opset: int, seed: int) -> None:
        self.np_dtype = np.dtype(dtype)
        self.elem_type = helper.np_dtype_to_tensor_dtype(self.np_dtype)
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array, *, exact: bool = False) -> str:
        name = self.name(stem)
        array = np.asarray(array) if exact else np.asarray(array, dtype=self.np_dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, **attributes) -> str:
        output = self.name(f"{stem}_out")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(stem), **attributes))
        return output

    def conv_weight(self, cout: int, cin: int, kernel: int) -> str:
        fan_in = cin * kernel * kernel
        return self.const("conv_w", self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin, kernel, kernel)))

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1, weight: str | None = None) -> str:
        inputs = [x, weight or self.conv_weight(cout, cin, kernel), self.const("conv_b", self.rng.normal(0, 0.01, cout))]
        return self.op("Conv", inputs, "conv", kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[kernel // 2] * 4)

    def mean(self, x: str, axes: list[int], keepdims: int, stem: str) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const("axes", np.array(axes, np.int64), exact=True)], stem, keepdims=keepdims)
        return self.op("ReduceMean", [x], stem, axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axes: list[int], stem: str) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const("axes", np.array(axes, np.int64), exact=True)], stem)
        return self.op("Unsqueeze", [x], stem, axes=axes)

    def model(self, name: str, x_shape: list, y: str, y_shape: list) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "y"
        for node in self.nodes:
            node.input[:] = ["y" if i == y else i for i in node.input]
        model = helper.make_model(
            helper.make_graph(
                self.nodes,
                name,
                [helper.make_tensor_value_info("x", self.elem_type, x_shape)],
                [helper.make_tensor_value_info("y", self.elem_type, y_shape)],
                self.initializers,
            ),
            opset_imports=[helper.make_opsetid("", self.opset)],
            ir_version=8,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


class _Layers:
    """Conv layers in one layout: "nhwc" wraps each Conv in Transposes (tf2onnx), "nchw" does not."""

    def __init__(self, g: _Graph, layout: str) -> None:
        self.g = g
        self.nhwc = layout == "nhwc"

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1, weight: str | None = None) -> str:
        g = self.g
        if self.nhwc:
            x = g.op("Transpose", [x], "to_nchw", perm=TO_NCHW)
        h = g.conv(x, cin, cout, kernel, stride, weight)
        return g.op("Transpose", [h], "to_nhwc", perm=TO_NHWC) if self.nhwc else h

    def batch_norm(self, x: str, channels: int) -> str:
        """Inference BatchNorm folded to y = x·scale + shift, per channel, as exporters write it."""
        g = self.g
        shape = (channels,) if self.nhwc else (channels, 1, 1)
        scale = g.const("bn_scale", g.rng.uniform(0.5, 1.5, shape))
        shift = g.const("bn_shift", g.rng.normal(0, 0.1, shape))
        return g.op("Add", [g.op("Mul", [x, scale], "bn_mul"), shift], "bn_add")

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> str:
        h = self.batch_norm(self.conv(x, cin, cout, kernel, stride), cout)
        return self.g.op("Relu", [h], "relu") if relu else h


def tf_resnet(opset: int = 13, dtype: str = "float32", layout: str = "nhwc") -> onnx.ModelProto:
    """Stem, an identity-shortcut residual block, a downsampling block with a projection shortcut,
    then a global mean and a MatMul classifier; 8×8 input, batch "N"."""
    g = _Graph(dtype, opset, seed=0)
    layers = _Layers(g, layout)
    h = layers.conv_bn("x", 3, 8)
    for cin, cout, stride in ((8, 8, 1), (8, 16, 2)):
        branch = layers.conv_bn(h, cin, cout, stride=stride)
        branch = layers.conv_bn(branch, cout, cout, relu=False)
        shortcut = h if stride == 1 else layers.conv_bn(h, cin, cout, kernel=1, stride=stride, relu=False)
        h = g.op("Relu", [g.op("Add", [branch, shortcut], "residual")], "relu")
    pooled = g.mean(h, [1, 2] if layers.nhwc else [2, 3], 0, "pool")
    g.op("MatMul", [pooled, g.const("fc_w", g.rng.normal(0, 0.25, (16, 10)))], "fc")
    x_shape = ["N", 8, 8, 3] if layers.nhwc else ["N", 3, 8, 8]
    return g.model(f"tf_resnet_{layout}", x_shape, "y", ["N", 10])


def shared_weight_model(opset: int = 13, dtype: str = "float32") -> onnx.ModelProto:
    """x → conv → Relu → [conv(W) → Relu → conv(W)] + shortcut → Relu → conv(W) → y: one weight W
    (8×8×3×3) feeds three convs, each with its own bias."""
    g = _Graph(dtype, opset, seed=0)
    h = g.op("Relu", [g.conv("x", 3, 8)], "relu")
    shared = g.conv_weight(8, 8, 3)
    branch = g.op("Relu", [g.conv(h, 8, 8, weight=shared)], "relu")
    branch = g.conv(branch, 8, 8, weight=shared)
    h = g.op("Relu", [g.op("Add", [branch, h], "residual")], "relu")
    g.conv(h, 8, 8, weight=shared)
    return g.model("shared_weight", ["N", 3, 6, 6], "y", ["N", 8, 6, 6])


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
    g = _Graph(dtype, opset, seed=1)
    se = np.random.default_rng(2)
    layers = _Layers(g, "nhwc")
    c, s = 8, 4
    h = g.op("Relu", [layers.conv("x", 3, c)], "relu")
    for index in range(blocks):
        prefix = f"se{index}/"
        x = h
        h = g.mean(x, [1, 2], int(squeeze == "keepdims"), prefix + "mean")
        for stem, (n_in, n_out) in (("fc1", (c, s)), ("fc2", (s, c))):
            weight = g.const(prefix + stem + "_w", se.uniform(-2, 2, (n_in, n_out)) / np.sqrt(n_in))
            h = g.op("MatMul", [h, weight], prefix + stem)
            h = g.op("Add", [h, g.const(prefix + stem + "_b", se.uniform(-0.5, 0.5, n_out))], prefix + stem + "_add")
            if stem == "fc1":
                h = g.op("Relu", [h], prefix + "relu")
        h = g.op(gate, [h], prefix + "gate")
        if squeeze == "reshape":
            h = g.op("Reshape", [h, g.const(prefix + "shape", np.array([-1, 1, 1, c], np.int64), exact=True)], prefix + "reshape")
        elif squeeze == "unsqueeze":
            h = g.unsqueeze(h, [1, 2], prefix + "unsqueeze")
        h = g.op("Mul", [x, h], prefix + "scale")
    layers.conv(h, c, c, kernel=1)
    return g.model("keras_se", ["N", 6, 6, 3], "y", ["N", 6, 6, c])


def calibration_inputs(model: onnx.ModelProto, batches: int = 4, batch: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded N(0, 1) inputs for the model's one input, batch `batch`."""
    rng = np.random.default_rng(seed)
    (graph_input,) = model.graph.input
    dims = [d.dim_value or batch for d in graph_input.type.tensor_type.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type)
    return [{graph_input.name: rng.standard_normal(dims).astype(dtype)} for _ in range(batches)]


def quantize_qdq(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """The model quantized by ONNX Runtime's `quantize_static`, QDQ format, its defaults otherwise."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration_inputs(model))

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as directory:
        source, target = Path(directory, "float.onnx"), Path(directory, "qdq.onnx")
        onnx.save(model, source)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, **options)
        return onnx.load(target)
