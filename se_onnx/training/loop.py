"""Fine-tunes an ONNX classifier in PyTorch (by default only its SE blocks) and writes the trained
values back into the same ONNX graph, each into the initializer or Constant node it came from.
Needs the `train` extra."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import onnx_ir as ir
import torch

from se_onnx.errors import SeOnnxError
from se_onnx.ir.constants import WEIGHT_INPUTS, constant_tensor, set_constant, weight_constants
from se_onnx.ir.graph import MAIN_GRAPH, node_label, required_input, value_name
from se_onnx.passes.export_weights import block_key
from se_onnx.passes.find import SEBlock
from se_onnx.passes.find_attention import AttentionBlock, find_attention
from se_onnx.runtime.datasets import ClassifierSignature, Dataset
from se_onnx.runtime.plots import pyplot, save_figure
from se_onnx.training.graph_module import OnnxModule

TRAIN_SCOPES = ("se", "attention", "all")
# The weights of a block's layers: a Conv's, Gemm's or MatMul's, and a separate bias Add's.
_LAYER_INPUTS: Mapping[str, tuple[int, ...]] = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "Add": (0, 1)}
# A sigmoid gate whose mean σ' over a batch is below this cannot be moved by gradient descent.
SATURATED_SLOPE = 1e-4


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The CLI's training options, one for one."""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    # se: only the SE blocks' layers; attention: the layers of every block of every kind (SE, ECA,
    # CBAM, coordinate attention); all: every layer's weights and biases
    train: str = "se"
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1:
            raise SeOnnxError(f"--epochs must be at least 1, not {self.epochs}")
        if not self.lr > 0:
            raise SeOnnxError(f"--lr must be positive, not {self.lr:g}")
        if self.batch_size < 1:
            raise SeOnnxError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.train not in TRAIN_SCOPES:
            raise SeOnnxError(f"--train must be one of {', '.join(TRAIN_SCOPES)}, not {self.train!r}")


@dataclasses.dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainReport:
    scope: str
    trained_initializers: list[str]  # the initializers and Constant node outputs trained, by name
    trained_parameters: int
    blocks: int
    saturated_gates: list[str]
    baseline: EpochResult  # epoch 0: the model as it came in
    epochs: list[EpochResult] = dataclasses.field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict:
        return {
            "scope": self.scope,
            "trained_parameters": self.trained_parameters,
            "trained_initializers": self.trained_initializers,
            "se_blocks": self.blocks,
            "saturated_gates": self.saturated_gates,
            "interrupted": self.interrupted,
            "epochs": [result.to_dict() for result in (self.baseline, *self.epochs)],
        }


def trainable_initializers(model: ir.Model, scope: str) -> tuple[list[str], list[AttentionBlock]]:
    """The constants `scope` trains (initializers and `Constant` node outputs of the main graph,
    see `se_onnx.ir.constants.constant_source`), in graph order, and the blocks it trains: the SE
    blocks (scope "se", and "all" counts them), or the blocks of every kind (scope "attention")."""
    every = find_attention(model)
    blocks = every if scope == "attention" else [block for block in every if block.kind == "se"]
    if scope != "all":
        if not blocks:
            what = "SE block" if scope == "se" else "attention block (SE, ECA, CBAM, coordinate attention)"
            raise SeOnnxError(f"the model has no {what} to train; insert some first, or pass --train all")
        _refuse_blocks_in_subgraphs(model, blocks)
        nodes = [node for block in blocks for node in _layer_nodes(block)]
        indices = _LAYER_INPUTS
    else:
        nodes = list(model.graph)
        indices = WEIGHT_INPUTS
    names = [value_name(value) for value in weight_constants(nodes, indices)]
    if not names:
        raise SeOnnxError(
            f"--train {scope} finds no float weight to train in the model's main graph "
            "(its layers' weights are neither initializers nor Constant nodes)"
        )
    return names, blocks


def _layer_nodes(block: AttentionBlock) -> list[ir.Node]:
    """The nodes whose constant inputs are a block's weights: an SE block's layers, and every conv
    of the other kinds (a gate's gain is a Mul's, and stays)."""
    if block.se is not None:
        return [node for layer in block.se.layers for node in layer.nodes]
    return [node for node in block.nodes if node.op_type in _LAYER_INPUTS and node.op_type != "Add"]


def _refuse_blocks_in_subgraphs(model: ir.Model, blocks: list[AttentionBlock]) -> None:
    """PyTorch runs only the main graph here: an SE block inside an If/Loop/Scan body cannot train."""
    for block in blocks:
        if block.graph != MAIN_GRAPH:
            outer = next(node for node in model.graph if block.graph.startswith(f"{MAIN_GRAPH}/{node_label(node)}."))
            op, label = outer.op_type, node_label(outer)
            raise SeOnnxError(
                f"SE block {block_key(block)!r} sits in the body of the {op} node {label!r} ({block.graph}); "
                f"se-onnx train runs only the main graph, not {op} bodies"
            )


def train_model(
    model: ir.Model,
    train_data: Dataset,
    val_data: Dataset | None,
    options: TrainOptions = TrainOptions(),
    *,
    on_epoch: Callable[[ir.Model, EpochResult], None] | None = None,
) -> tuple[ir.Model, TrainReport]:
    """Train `model` (not modified) with cross-entropy on its class scores; a copy with the trained
    constants written back, and the report.

    `on_epoch(model, result)` is called with epoch 0 (the model as it came, measured) and after
    each completed epoch with a model that holds that epoch's weights, so a caller can keep a
    checkpoint. On Ctrl-C the copy holds the last completed epoch and the report says it was
    interrupted.
    """
    options.validate()
    signature = ClassifierSignature.of(model)  # refuses a model that does not output class scores
    _refuse_non_float32(model)
    names, blocks = trainable_initializers(model, options.train)
    module = OnnxModule(model)
    output = model.graph.outputs[0]
    producer = output.producer()
    # A softmax at the end is undone so the loss sees logits, whose gradients do not vanish.
    logits = required_input(producer) if producer is not None and producer.op_type == "Softmax" else output
    logits_name = value_name(logits)
    gate_inputs = {
        block_key(block): value_name(required_input(block.nodes[_gate_index(block)]))
        for block in (found.se for found in blocks if found.se is not None)
        if block.gate.op_type == "Sigmoid"
    }
    parameters = [module.parameters_by_name[name] for name in names]
    report = TrainReport(options.train, names, sum(p.numel() for p in parameters), len(blocks), [], _empty_epoch())

    with _deterministic(options.seed):
        report.saturated_gates = _saturated(module, train_data, gate_inputs, options.batch_size)
        for key in report.saturated_gates:
            warnings.warn(
                f"SE block {key!r} has a saturated gate (mean σ' < {SATURATED_SLOPE:g}): training will hardly move it; "
                "insert the blocks with --init identity (the trainable identity) instead",
                stacklevel=2,
            )
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(parameters, lr=options.lr)
        rng = np.random.default_rng(options.seed)
        trained = model.clone()

        def run(
            data: Dataset, *, train: bool, order: np.ndarray | None, label: str, predicted: np.ndarray | None = None
        ) -> tuple[float, float]:
            """Loss and accuracy over `data`; `predicted`, when given, counts each class's predictions."""
            total_loss, correct, seen = 0.0, 0, 0
            batches = data.batches(options.batch_size, order)
            bar = _progress_bar(math.ceil(len(data) / options.batch_size), label, options.progress)
            for x, y in batches:
                inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
                with torch.set_grad_enabled(train):
                    logits = module(inputs, extra=(logits_name,))[-1]
                    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
                if train:
                    optimizer.zero_grad()
                    (loss / len(y)).backward()
                    optimizer.step()
                total_loss += float(loss.detach())
                correct += int((logits.argmax(1) == targets).sum())
                if predicted is not None:
                    predicted += np.bincount(logits.argmax(1).numpy(), minlength=len(predicted))
                seen += len(y)
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
                bar.update()
            bar.close()
            return total_loss / len(data), correct / len(data)

        def evaluate(epoch: int, started: float, train_loss: float, train_accuracy: float) -> EpochResult:
            val = run(val_data, train=False, order=None, label="validate") if val_data is not None else (None, None)
            return EpochResult(epoch, train_loss, train_accuracy, val[0], val[1], time.perf_counter() - started)

        try:
            started = time.perf_counter()
            predicted = np.zeros(signature.classes, np.int64)
            before = run(train_data, train=False, order=None, label="epoch 0 (before)", predicted=predicted)
            report.baseline = evaluate(0, started, *before)
            if on_epoch is not None:
                on_epoch(trained, report.baseline)
            if options.train != "all":
                _warn_if_untrained(report.baseline.train_accuracy, predicted)
            for epoch in range(1, options.epochs + 1):
                started = time.perf_counter()
                order = rng.permutation(len(train_data))
                train_loss, train_accuracy = run(
                    train_data, train=True, order=order, label=f"epoch {epoch}/{options.epochs}"
                )
                result = evaluate(epoch, started, train_loss, train_accuracy)
                _write_back(trained, module, names)
                report.epochs.append(result)
                if on_epoch is not None:
                    on_epoch(trained, result)
        except KeyboardInterrupt:
            # `trained` still holds the last completed epoch: it is written back only between epochs.
            report.interrupted = True
    return trained, report


def _warn_if_untrained(accuracy: float, predicted: np.ndarray) -> None:
    """Training only the SE blocks rescales features the model already has: a model at chance, or
    one that gives every sample the same class (an untrained one), stays there, and its accuracy
    would sit at the same value every epoch without a word why."""
    chance = 1 / len(predicted)
    top = int(predicted.argmax())
    share = predicted[top] / max(int(predicted.sum()), 1)
    if accuracy <= chance or share == 1:
        warnings.warn(
            f"before training the model scores {accuracy:.4f} on the training data (chance {chance:.4f}) and "
            f"predicts class {top} for {share:.0%} of it: it looks untrained, and training its SE blocks alone "
            "cannot teach it the classes; pass --train all, or start from a trained model",
            stacklevel=3,
        )


def _gate_index(block: SEBlock) -> int:
    return next(index for index, node in enumerate(block.nodes) if node.op_type == block.gate.op_type)


def _empty_epoch() -> EpochResult:
    return EpochResult(0, math.nan, math.nan, None, None, 0.0)


def _write_back(model: ir.Model, module: OnnxModule, names: list[str]) -> None:
    """Copy the trained parameters into `model`'s initializers and Constant nodes of the same
    names, each in its own dtype and form."""
    values = {value.name: value for value in _main_graph_values(model)}
    for name in names:
        set_constant(values[name], module.parameters_by_name[name].detach().numpy())


def _main_graph_values(model: ir.Model) -> Iterator[ir.Value]:
    yield from model.graph.initializers.values()
    for node in model.graph:
        yield from node.outputs


def _saturated(module: OnnxModule, data: Dataset, gate_inputs: dict[str, str], batch_size: int) -> list[str]:
    """The blocks whose sigmoid gate has a vanishing slope on the first batch of data."""
    if not gate_inputs:
        return []
    x, _ = next(data.batches(batch_size))
    with torch.no_grad():
        values = module(torch.from_numpy(x), extra=tuple(gate_inputs.values()))[-len(gate_inputs) :]
    saturated = []
    for key, z in zip(gate_inputs, values):
        slope = torch.sigmoid(z) * (1 - torch.sigmoid(z))
        if float(slope.mean()) < SATURATED_SLOPE:
            saturated.append(key)
    return saturated


def _refuse_non_float32(model: ir.Model) -> None:
    for value in _main_graph_values(model):
        tensor = value.const_value if value.is_initializer() else _constant_node_tensor(value)
        if tensor is not None and tensor.dtype.is_floating_point() and tensor.dtype != ir.DataType.FLOAT:
            kind = "initializer" if value.is_initializer() else "constant"
            raise SeOnnxError(f"{kind} {value.name!r} is {tensor.dtype.name}; train an fp32 model, then convert it")


def _constant_node_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    producer = value.producer()
    return constant_tensor(value) if producer is not None and producer.op_type == "Constant" else None


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels for the duration of training; the global settings come back after."""
    previous = torch.are_deterministic_algorithms_enabled()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.random.set_rng_state(state)


def _progress_bar(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="batch", file=sys.stderr, leave=False, disable=not enabled)


def plot_history(report: TrainReport, path) -> None:
    """Loss and accuracy per epoch (train and validation) as a PNG; epoch 0 is the untrained model."""
    from matplotlib.ticker import MaxNLocator

    results = [report.baseline, *report.epochs]
    epochs = [r.epoch for r in results]
    figure, (loss_axis, accuracy_axis) = pyplot().subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((loss_axis, "loss", "cross-entropy loss"), (accuracy_axis, "accuracy", "top-1 accuracy")):
        axis.plot(epochs, [getattr(r, f"train_{key}") for r in results], "o-", label="train")
        if report.baseline.val_loss is not None:
            axis.plot(epochs, [getattr(r, f"val_{key}") for r in results], "s-", label="validation")
        axis.set_xlabel("epoch (0: before training)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"se-onnx train --train {report.scope}: {report.trained_parameters:,} parameters trained")
    figure.tight_layout()
    save_figure(figure, path)
