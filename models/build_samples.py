"""Builds the sample conv models that se-onnx's README, tests and benchmarks use.

Every builder returns an `onnx.ModelProto` at the requested opset and float type, with seeded
random weights scaled so that activations stay in a sane range, and a batch dim that is symbolic
("N") unless a number is given. Run this file to write the committed samples (or every variant
with --all):

    python models/build_samples.py [--output-dir models] [--all]
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


class _Builder:
    """Appends nodes and initializers to one graph, naming them like an exporter would."""

    def __init__(self, dtype: str = "float32", seed: int = 0) -> None:
        if dtype not in _ONNX_TYPES:
            raise ValueError(f"dtype must be one of {sorted(_ONNX_TYPES)}, not {dtype!r}")
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, itertools.count] = {}

    def _name(self, stem: str) -> str:
        return f"{stem}_{next(self._counts.setdefault(stem, itertools.count()))}"

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(self.dtype), name))
        return name

    def node(self, op_type: str, inputs: list[str], stem: str | None = None, **attributes) -> str:
        name = self._name(stem or op_type.lower())
        output = f"{name}_output"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attributes))
        return output

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, *, rank: int = 2, stride: int = 1,
             group: int = 1, bias: bool = True) -> str:
        name = self._name("conv")
        fan_in = cin // group * kernel**rank
        shape = (cout, cin // group) + (kernel,) * rank
        inputs = [x, self.weight(f"{name}.weight", self.rng.normal(0, math.sqrt(2 / fan_in), shape))]
        if bias:
            inputs.append(self.weight(f"{name}.bias", self.rng.normal(0, 0.01, cout)))
        output = f"{name}_output"
        self.nodes.append(
            helper.make_node(
                "Conv", inputs, [output], name=name, kernel_shape=[kernel] * rank,
                strides=[stride] * rank, pads=[kernel // 2] * (2 * rank), group=group,
            )
        )
        return output

    def batch_norm(self, x: str, channels: int) -> str:
        name = self._name("bn")
        params = [
            self.weight(f"{name}.weight", self.rng.uniform(0.5, 1.5, channels)),
            self.weight(f"{name}.bias", self.rng.normal(0, 0.1, channels)),
            self.weight(f"{name}.running_mean", self.rng.normal(0, 0.1, channels)),
            self.weight(f"{name}.running_var", self.rng.uniform(0.5, 1.5, channels)),
        ]
        output = f"{name}_output"
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [output], name=name, epsilon=1e-5))
        return output

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int = 3, *, fold: bool = False, act: str | None = "Relu",
                **conv_options) -> str:
        """Conv → BatchNorm → activation, or Conv (with bias) → activation when BN is folded."""
        y = self.conv(x, cin, cout, kernel, bias=fold, **conv_options)
        if not fold:
            y = self.batch_norm(y, cout)
        return self.node(act, [y]) if act else y

    def squeeze_excitation(self, x: str, channels: int, squeeze: int, act: str = "Relu") -> str:
        """The torchvision form: GlobalAveragePool → 1×1 Conv → act → 1×1 Conv → HardSigmoid → Mul."""
        pooled = self.node("GlobalAveragePool", [x], "se_pool")
        hidden = self.node(act, [self.conv(pooled, channels, squeeze, 1)])
        gate = self.node("HardSigmoid", [self.conv(hidden, squeeze, channels, 1)], "se_gate", alpha=1 / 6, beta=0.5)
        return self.node("Mul", [gate, x], "se_scale")

    def head(self, x: str, channels: int, classes: int) -> str:
        pooled = self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)
        name = self._name("fc")
        weight = self.weight(f"{name}.weight", self.rng.normal(0, 1 / math.sqrt(channels), (classes, channels)))
        bias = self.weight(f"{name}.bias", np.zeros(classes))
        output = f"{name}_output"
        self.nodes.append(helper.make_node("Gemm", [pooled, weight, bias], [output], name=name, transB=1))
        return output

    def model(self, graph_name: str, x_shape: list, y: str, y_shape: list, opset: int) -> onnx.ModelProto:
        """The finished model; the graph's input is `input` and its output, `y`, is renamed `output`."""
        for node in self.nodes:
            node.input[:] = ["output" if name == y else name for name in node.input]
            node.output[:] = ["output" if name == y else name for name in node.output]
        elem_type = _ONNX_TYPES[self.dtype]
        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info("input", elem_type, x_shape)],
            [helper.make_tensor_value_info("output", elem_type, y_shape)],
            self.initializers,
        )
        opsets = [helper.make_opsetid("", opset)]
        # The oldest IR version the opset allows, so that older runtimes load the older samples.
        model = helper.make_model(graph, opset_imports=opsets, producer_name="se-onnx samples",
                                  ir_version=helper.find_min_ir_version_for(opsets))
        onnx.checker.check_model(model, full_check=True)
        return model


def _basic_block(b: _Builder, x: str, cin: int, cout: int, stride: int) -> str:
    """ResNet's basic block: two 3×3 conv-BN on the branch, a 1×1 projection when the shape changes."""
    branch = b.conv_bn(x, cin, cout, stride=stride)
    branch = b.conv_bn(branch, cout, cout, act=None)
    shortcut = x if stride == 1 and cin == cout else b.conv_bn(x, cin, cout, 1, stride=stride, act=None)
    return b.node("Relu", [b.node("Add", [branch, shortcut])])


def resnet_like(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """A small ResNet: stem, an identity block and a downsampling block with a 1×1 projection shortcut.

    BatchNorm is not folded; input [batch, 3, 32, 32], output [batch, 10].
    """
    b = _Builder(dtype)
    x = b.conv_bn("input", 3, 16)
    x = _basic_block(b, x, 16, 16, 1)
    x = _basic_block(b, x, 16, 32, 2)
    return b.model("resnet_like", [batch, 3, 32, 32], b.head(x, 32, 10), [batch, 10], opset)


def vgg_like(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """A plain chain of Conv → Relu with a MaxPool and no residual connections: [batch, 3, 32, 32] → [batch, 10]."""
    b = _Builder(dtype, seed=1)
    x = b.conv_bn("input", 3, 8, fold=True)
    x = b.conv_bn(x, 8, 16, fold=True)
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv_bn(x, 16, 16, fold=True)
    return b.model("vgg_like", [batch, 3, 32, 32], b.head(x, 16, 10), [batch, 10], opset)


def depthwise_separable(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """MobileNet-v1 style: depthwise 3×3 (group = channels) and pointwise 1×1 convs, each with BN and Relu."""
    b = _Builder(dtype, seed=2)
    x = b.conv_bn("input", 3, 8, stride=2)
    for cin, cout, stride in ((8, 16, 1), (16, 32, 2)):
        x = b.conv_bn(x, cin, cin, stride=stride, group=cin)
        x = b.conv_bn(x, cin, cout, 1)
    return b.model("depthwise_separable", [batch, 3, 32, 32], b.head(x, 32, 10), [batch, 10], opset)


def conv1d_model(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """Conv1d layers over a sequence, with a residual block: [batch, 4, 64] → [batch, 5]."""
    b = _Builder(dtype, seed=3)
    x = b.conv_bn("input", 4, 16, rank=1)
    branch = b.conv_bn(b.conv_bn(x, 16, 16, rank=1), 16, 16, rank=1, act=None)
    x = b.node("Relu", [b.node("Add", [branch, x])])
    return b.model("conv1d_model", [batch, 4, 64], b.head(x, 16, 5), [batch, 5], opset)


def conv3d_model(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """Conv3d layers over a volume: [batch, 2, 8, 16, 16] → [batch, 5]."""
    b = _Builder(dtype, seed=4)
    x = b.conv_bn("input", 2, 8, rank=3, fold=True)
    x = b.conv_bn(x, 8, 16, rank=3, stride=2, fold=True)
    return b.model("conv3d_model", [batch, 2, 8, 16, 16], b.head(x, 16, 5), [batch, 5], opset)


def tiny_conv(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """The smallest useful conv model, for latency checks: [batch, 1, 8, 8] → [batch, 4]."""
    b = _Builder(dtype, seed=5)
    x = b.conv_bn("input", 1, 4, fold=True)
    return b.model("tiny_conv", [batch, 1, 8, 8], b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1),
                   [batch, 4], opset)


def mobilenet_se_like(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """MobileNetV3-style inverted residuals that already carry SE blocks in torchvision's exported form.

    HardSwish activations from opset 14 (where the op exists), Relu before; [batch, 3, 32, 32] → [batch, 10].
    """
    b = _Builder(dtype, seed=6)
    act = "HardSwish" if opset >= 14 else "Relu"
    x = b.conv_bn("input", 3, 16, stride=2, act=act)
    for _ in range(2):
        branch = b.conv_bn(x, 16, 64, 1, act=act)
        branch = b.conv_bn(branch, 64, 64, group=64, act=act)
        branch = b.squeeze_excitation(branch, 64, 16)
        branch = b.conv_bn(branch, 64, 16, 1, act=None)
        x = b.node("Add", [x, branch])
    return b.model("mobilenet_se_like", [batch, 3, 32, 32], b.head(x, 16, 10), [batch, 10], opset)


def resnet50_sized(opset: int = 17, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """ResNet-50's layout (53 convs, 16 bottleneck blocks, ≈25.6 M parameters, BatchNorm folded into the
    convs as PyTorch's exporter writes it): [batch, 3, 224, 224] → [batch, 1000]."""
    b = _Builder(dtype, seed=7)
    x = b.conv_bn("input", 3, 64, 7, stride=2, fold=True)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
        for index in range(blocks):
            stride = 2 if index == 0 and stage > 0 else 1
            branch = b.conv_bn(x, cin, width, 1, fold=True)
            branch = b.conv_bn(branch, width, width, stride=stride, fold=True)
            branch = b.conv_bn(branch, width, width * 4, 1, fold=True, act=None)
            shortcut = b.conv_bn(x, cin, width * 4, 1, stride=stride, fold=True, act=None) if index == 0 else x
            x = b.node("Relu", [b.node("Add", [branch, shortcut])])
            cin = width * 4
    return b.model("resnet50_sized", [batch, 3, 224, 224], b.head(x, 2048, 1000), [batch, 1000], opset)


def conv_chain(convs: int, opset: int = 17, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """A long chain of small 3×3 Conv → Relu layers, for measuring how passes scale with graph size."""
    b = _Builder(dtype, seed=8)
    x = "input"
    for _ in range(convs):
        x = b.conv_bn(x, 8, 8, fold=True)
    return b.model("conv_chain", [batch, 8, 8, 8], x, [batch, 8, 8, 8], opset)


def save_with_external_data(model: onnx.ModelProto, path: str | Path) -> None:
    """Saves `model` with every initializer in `<file name>.data` beside it, as large-model exporters do."""
    path = Path(path)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=0)


# The samples committed to the repository: the README's sample and the service's default models.
COMMITTED = {
    "resnet_tiny": lambda: resnet_like(opset=13),
    "tiny_conv": lambda: tiny_conv(opset=13),
    "mobilenet_se_tiny": lambda: mobilenet_se_like(opset=17),
}

_VARIANTS = {
    "resnet": resnet_like,
    "vgg": vgg_like,
    "dwsep": depthwise_separable,
    "conv1d": conv1d_model,
    "conv3d": conv3d_model,
    "mobilenet_se": mobilenet_se_like,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent, help="where to write (default: models/)")
    parser.add_argument(
        "--all", action="store_true",
        help="also write every sample at opsets 13 and 18, fp32 and fp16, one with external data, "
        "and the 100 MB ResNet-50-sized model",
    )
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in COMMITTED.items():
        onnx.save(build(), args.output_dir / f"{name}.onnx")
        written.append(f"{name}.onnx")
    if args.all:
        for (name, build), opset, dtype in itertools.product(_VARIANTS.items(), (13, 18), ("float32", "float16")):
            file_name = f"{name}_opset{opset}_{'fp32' if dtype == 'float32' else 'fp16'}.onnx"
            onnx.save(build(opset=opset, dtype=dtype), args.output_dir / file_name)
            written.append(file_name)
        external = args.output_dir / "resnet_external" / "model.onnx"
        external.parent.mkdir(exist_ok=True)
        save_with_external_data(resnet_like(opset=18), external)
        onnx.save(resnet50_sized(), args.output_dir / "resnet50_sized.onnx")
        written += ["resnet_external/model.onnx (+ model.onnx.data)", "resnet50_sized.onnx"]
    print(f"wrote {len(written)} models to {args.output_dir}: {', '.join(written)}")


if __name__ == "__main__":
    main()
