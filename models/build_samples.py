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
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

if __name__ == "__main__":  # run as a script: models/ is a package of the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.builders import GraphBuilder


class _Builder(GraphBuilder):
    """The layers of the samples, named as PyTorch's exporter names them ("conv_0.weight", "bn_1")."""

    def __init__(self, dtype: str = "float32", seed: int = 0, opset: int = 13, *, untrained_bn: bool = False) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, not {dtype!r}")
        super().__init__(dtype=dtype, seed=seed, opset=opset, output_suffix="_output")
        # BatchNorm as a network to be trained from scratch starts: scale 1, bias 0, mean 0, variance 1.
        self.untrained_bn = untrained_bn

    def param(self, name: str, array: np.ndarray) -> ir.Value:
        return self.tensor(name, array)

    def node(self, op_type: str, inputs: list[ir.Value], stem: str | None = None, **attributes) -> ir.Value:
        return self.op(op_type, inputs, stem or op_type.lower(), **attributes)

    def conv(
        self,
        x: ir.Value,
        cin: int,
        cout: int,
        kernel: int = 3,
        *,
        rank: int = 2,
        stride: int = 1,
        group: int = 1,
        bias: bool = True,
    ) -> ir.Value:
        name = self.names("conv")
        fan_in = cin // group * kernel**rank
        shape = (cout, cin // group) + (kernel,) * rank
        inputs = [x, self.param(f"{name}.weight", self.rng.normal(0, math.sqrt(2 / fan_in), shape))]
        if bias:
            inputs.append(self.param(f"{name}.bias", self.rng.normal(0, 0.01, cout)))
        return self.op(
            "Conv",
            inputs,
            "conv",
            name=name,
            kernel_shape=[kernel] * rank,
            strides=[stride] * rank,
            pads=[kernel // 2] * (2 * rank),
            group=group,
        )

    def batch_norm(self, x: ir.Value, channels: int) -> ir.Value:
        name = self.names("bn")
        if self.untrained_bn:
            values = np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels)
        else:
            values = (
                self.rng.uniform(0.5, 1.5, channels),
                self.rng.normal(0, 0.1, channels),
                self.rng.normal(0, 0.1, channels),
                self.rng.uniform(0.5, 1.5, channels),
            )
        params = [
            self.param(f"{name}.{field}", value)
            for field, value in zip(("weight", "bias", "running_mean", "running_var"), values)
        ]
        return self.op("BatchNormalization", [x, *params], "bn", name=name, epsilon=1e-5)

    def conv_bn(
        self,
        x: ir.Value,
        cin: int,
        cout: int,
        kernel: int = 3,
        *,
        fold: bool = False,
        act: str | None = "Relu",
        **conv_options,
    ) -> ir.Value:
        """Conv → BatchNorm → activation, or Conv (with bias) → activation when BN is folded."""
        y = self.conv(x, cin, cout, kernel, bias=fold, **conv_options)
        if not fold:
            y = self.batch_norm(y, cout)
        return self.node(act, [y]) if act else y

    def squeeze_excitation(self, x: ir.Value, channels: int, squeeze: int, act: str = "Relu") -> ir.Value:
        """The torchvision form: GlobalAveragePool → 1×1 Conv → act → 1×1 Conv → HardSigmoid → Mul."""
        pooled = self.node("GlobalAveragePool", [x], "se_pool")
        hidden = self.node(act, [self.conv(pooled, channels, squeeze, 1)])
        gate = self.node("HardSigmoid", [self.conv(hidden, squeeze, channels, 1)], "se_gate", alpha=1 / 6, beta=0.5)
        return self.node("Mul", [gate, x], "se_scale")

    def head(self, x: ir.Value, channels: int, classes: int) -> ir.Value:
        pooled = self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)
        name = self.names("fc")
        weight = self.param(f"{name}.weight", self.rng.normal(0, 1 / math.sqrt(channels), (classes, channels)))
        bias = self.param(f"{name}.bias", np.zeros(classes))
        return self.op("Gemm", [pooled, weight, bias], "fc", name=name, transB=1)

    def sample(self, graph_name: str, x: ir.Value, y: ir.Value, y_shape: list) -> onnx.ModelProto:
        """The finished model; the graph's input is `input` and its output `output`."""
        # The oldest IR version the opset allows, so that older runtimes load the older samples.
        ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", self.opset)])
        y = self.output(y, "output", y_shape)
        return self.model(graph_name, [x], [y], ir_version=ir_version, producer_name="se-onnx samples")


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
    b = _Builder(dtype, opset=opset)
    x_in = b.input("input", [batch, 3, 32, 32])
    x = b.conv_bn(x_in, 3, 16)
    x = _basic_block(b, x, 16, 16, 1)
    x = _basic_block(b, x, 16, 32, 2)
    return b.sample("resnet_like", x_in, b.head(x, 32, 10), [batch, 10])


def cifar_resnet(
    blocks_per_stage: int = 1,
    *,
    image: tuple[int, int, int] = (1, 28, 28),
    classes: int = 10,
    stem_stride: int = 1,
    seed: int = 0,
    opset: int = 17,
    batch: int | str = "N",
) -> onnx.ModelProto:
    """The ResNet that He et al. (2016, §4.2) train on CIFAR-10, untrained, for training from scratch:
    a 3×3 conv stem of 16 channels, three stages of `blocks_per_stage` basic blocks at 16, 32 and 64
    channels (stride 1, 2, 2), global average pooling and a linear layer: ResNet-8 for 1 block per
    stage, ResNet-14 for 2, ResNet-20 for 3. Where the shape changes the shortcut is a 1×1 conv-BN
    projection (the paper's option B, as `resnet_like`; its CIFAR nets pad with zeros instead).

    Conv weights He-normal (fan-in), no conv biases, BatchNorm unfolded at its initial state (scale 1,
    bias 0, mean 0, variance 1), the linear layer normal(0, 1/√64) with zero bias; `seed` draws them.
    Input [batch, *image] (Fashion-MNIST's 1 × 28 × 28 by default), output [batch, classes] logits.
    A `stem_stride` of 2 halves the stages' resolution, for about a quarter of the FLOPs.
    """
    b = _Builder("float32", seed=seed, opset=opset, untrained_bn=True)
    x_in = b.input("input", [batch, *image])
    x = b.conv_bn(x_in, image[0], 16, stride=stem_stride)
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for index in range(blocks_per_stage):
            x = _basic_block(b, x, cin, width, 2 if stage > 0 and index == 0 else 1)
            cin = width
    return b.sample(f"resnet{6 * blocks_per_stage + 2}", x_in, b.head(x, cin, classes), [batch, classes])


def vgg_like(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """A plain chain of Conv → Relu with a MaxPool and no residual connections: [batch, 3, 32, 32] → [batch, 10]."""
    b = _Builder(dtype, seed=1, opset=opset)
    x_in = b.input("input", [batch, 3, 32, 32])
    x = b.conv_bn(x_in, 3, 8, fold=True)
    x = b.conv_bn(x, 8, 16, fold=True)
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv_bn(x, 16, 16, fold=True)
    return b.sample("vgg_like", x_in, b.head(x, 16, 10), [batch, 10])


def depthwise_separable(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """MobileNet-v1 style: depthwise 3×3 (group = channels) and pointwise 1×1 convs, each with BN and Relu."""
    b = _Builder(dtype, seed=2, opset=opset)
    x_in = b.input("input", [batch, 3, 32, 32])
    x = b.conv_bn(x_in, 3, 8, stride=2)
    for cin, cout, stride in ((8, 16, 1), (16, 32, 2)):
        x = b.conv_bn(x, cin, cin, stride=stride, group=cin)
        x = b.conv_bn(x, cin, cout, 1)
    return b.sample("depthwise_separable", x_in, b.head(x, 32, 10), [batch, 10])


def conv1d_model(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """Conv1d layers over a sequence, with a residual block: [batch, 4, 64] → [batch, 5]."""
    b = _Builder(dtype, seed=3, opset=opset)
    x_in = b.input("input", [batch, 4, 64])
    x = b.conv_bn(x_in, 4, 16, rank=1)
    branch = b.conv_bn(b.conv_bn(x, 16, 16, rank=1), 16, 16, rank=1, act=None)
    x = b.node("Relu", [b.node("Add", [branch, x])])
    return b.sample("conv1d_model", x_in, b.head(x, 16, 5), [batch, 5])


def conv3d_model(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """Conv3d layers over a volume: [batch, 2, 8, 16, 16] → [batch, 5]."""
    b = _Builder(dtype, seed=4, opset=opset)
    x_in = b.input("input", [batch, 2, 8, 16, 16])
    x = b.conv_bn(x_in, 2, 8, rank=3, fold=True)
    x = b.conv_bn(x, 8, 16, rank=3, stride=2, fold=True)
    return b.sample("conv3d_model", x_in, b.head(x, 16, 5), [batch, 5])


def tiny_conv(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """The smallest useful conv model, for latency checks: [batch, 1, 8, 8] → [batch, 4]."""
    b = _Builder(dtype, seed=5, opset=opset)
    x_in = b.input("input", [batch, 1, 8, 8])
    x = b.conv_bn(x_in, 1, 4, fold=True)
    return b.sample("tiny_conv", x_in, b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1), [batch, 4])


def mobilenet_se_like(opset: int = 13, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """MobileNetV3-style inverted residuals that already carry SE blocks in torchvision's exported form.

    HardSwish activations from opset 14 (where the op exists), Relu before; [batch, 3, 32, 32] → [batch, 10].
    """
    b = _Builder(dtype, seed=6, opset=opset)
    x_in = b.input("input", [batch, 3, 32, 32])
    act = "HardSwish" if opset >= 14 else "Relu"
    x = b.conv_bn(x_in, 3, 16, stride=2, act=act)
    for _ in range(2):
        branch = b.conv_bn(x, 16, 64, 1, act=act)
        branch = b.conv_bn(branch, 64, 64, group=64, act=act)
        branch = b.squeeze_excitation(branch, 64, 16)
        branch = b.conv_bn(branch, 64, 16, 1, act=None)
        x = b.node("Add", [x, branch])
    return b.sample("mobilenet_se_like", x_in, b.head(x, 16, 10), [batch, 10])


def resnet50_sized(opset: int = 17, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """ResNet-50's layout (53 convs, 16 bottleneck blocks, ≈25.6 M parameters, BatchNorm folded into the
    convs as PyTorch's exporter writes it): [batch, 3, 224, 224] → [batch, 1000]."""
    b = _Builder(dtype, seed=7, opset=opset)
    x_in = b.input("input", [batch, 3, 224, 224])
    x = b.conv_bn(x_in, 3, 64, 7, stride=2, fold=True)
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
    return b.sample("resnet50_sized", x_in, b.head(x, 2048, 1000), [batch, 1000])


def conv_chain(convs: int, opset: int = 17, dtype: str = "float32", batch: int | str = "N") -> onnx.ModelProto:
    """A long chain of small 3×3 Conv → Relu layers, for measuring how passes scale with graph size."""
    b = _Builder(dtype, seed=8, opset=opset)
    x_in = b.input("input", [batch, 8, 8, 8])
    x = x_in
    for _ in range(convs):
        x = b.conv_bn(x, 8, 8, fold=True)
    return b.sample("conv_chain", x_in, x, [batch, 8, 8, 8])


def save_with_external_data(model: onnx.ModelProto, path: str | Path) -> None:
    """Saves `model` with every initializer in `<file name>.data` beside it, as large-model exporters do."""
    path = Path(path)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(
        copy,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=0,
    )


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
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent, help="where to write (default: models/)"
    )
    parser.add_argument(
        "--all",
        action="store_true",
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
