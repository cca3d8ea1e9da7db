"""Trains the quick start's sample classifier, models/classifier_tiny.onnx, on models/make_dataset.py's
patterns, and writes it as ONNX.

Three 3 × 3 conv layers with ReLU (8, 16 and 32 channels, the last two with stride 2), a global
average pool and a linear layer over the six classes: about 6,200 parameters, trained with Adam in
PyTorch (the `train` extra) on one thread with seeded, deterministic kernels. The ONNX graph is
written node by node from the trained weights (opset 13, batch dim "N"), so no exporter is involved.
Trained deliberately briefly: well above chance, short of what the data allows, so that what SE
blocks add by fine-tuning shows.

    python models/build_classifier.py [--output models/classifier_tiny.onnx] [--epochs 12]

Rerunning it with the same torch build on the same kind of CPU writes the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
from make_dataset import CLASSES, SIZE, make_shapes  # beside this script
from onnx import TensorProto, helper, numpy_helper

CHANNELS = (8, 16, 32)
STRIDES = (1, 2, 2)


def build_network() -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    previous = 3
    for channels, stride in zip(CHANNELS, STRIDES):
        layers += [torch.nn.Conv2d(previous, channels, 3, stride=stride, padding=1), torch.nn.ReLU()]
        previous = channels
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(previous, len(CLASSES))]
    return torch.nn.Sequential(*layers)


def train(network: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(network(inputs[batch]), targets[batch]).backward()
            optimizer.step()


def accuracy(network: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((network(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def to_onnx(network: torch.nn.Sequential) -> onnx.ModelProto:
    """The trained network as an ONNX graph, named as an exporter would name it."""
    nodes, initializers = [], []

    def weight(name: str, tensor: torch.Tensor) -> str:
        initializers.append(numpy_helper.from_array(tensor.detach().numpy().astype(np.float32), name))
        return name

    value = "input"
    convs = [layer for layer in network if isinstance(layer, torch.nn.Conv2d)]
    for index, conv in enumerate(convs):
        name = f"conv_{index}"
        inputs = [value, weight(f"{name}.weight", conv.weight), weight(f"{name}.bias", conv.bias)]
        nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [f"{name}_output"],
                name=name,
                kernel_shape=[3, 3],
                strides=list(conv.stride),
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_output"], [f"relu_{index}_output"], name=f"relu_{index}"))
        value = f"relu_{index}_output"
    linear = network[-1]
    nodes += [
        helper.make_node("GlobalAveragePool", [value], ["pool_output"], name="pool"),
        helper.make_node("Flatten", ["pool_output"], ["flatten_output"], name="flatten", axis=1),
        helper.make_node(
            "Gemm",
            ["flatten_output", weight("fc.weight", linear.weight), weight("fc.bias", linear.bias)],
            ["output"],
            name="fc",
            transB=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier_tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(CLASSES)])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    model.producer_name = "se-onnx samples"
    model.doc_string = f"classes: {', '.join(CLASSES)}"
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).with_name("classifier_tiny.onnx")))
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training data (default 12)")
    parser.add_argument("--train", type=int, default=2000, help="training images (default 2000, seed 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling (default 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    x, y = make_shapes(args.train, seed=0)
    x_val, y_val = make_shapes(500, seed=1)  # make_dataset.py's default validation split
    network = build_network()
    train(network, x, y, args.epochs, args.seed)
    network.eval()
    onnx.save(to_onnx(network), args.output)
    print(
        f"{args.output}: train accuracy {accuracy(network, x, y):.4f}, "
        f"validation accuracy {accuracy(network, x_val, y_val):.4f} (chance {1 / len(CLASSES):.4f})"
    )


if __name__ == "__main__":
    main()
