"""Fine-tunes an ONNX classifier in PyTorch (by default only its SE blocks) and writes the trained
values back into the same ONNX graph, each into the initializer or Constant node it came from.
Needs the `train` extra."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from se_onnx.errors import SeOnnxError
from se_onnx.ir.constants import WEIGHT_INPUTS, constant_tensor, set_constant, weight_constants
from se_onnx.ir.graph import MAIN_GRAPH, node_label, required_input, underlying, value_name
from se_onnx.passes.export_weights import block_key
from se_onnx.passes.find import SEBlock
from se_onnx.passes.find_attention import AttentionBlock, find_attention
from se_onnx.runtime.datasets import ClassifierSignature, Dataset, ImageFolderDataset
from se_onnx.runtime.plots import pyplot, save_figure
from se_onnx.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from se_onnx.training.data import TorchDataset, make_loader, set_epoch
from se_onnx.training.distributed import Placement, check_amp, resolve_device
from se_onnx.training.graph_module import OnnxModule
from se_onnx.training.options import TrainOptions
from se_onnx.training.recipe import build_optimizer, build_schedule, current_lr, no_decay_names

# The weights of a block's layers: a Conv's, Gemm's or MatMul's, and a separate bias Add's.
_LAYER_INPUTS: Mapping[str, tuple[int, ...]] = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "Add": (0, 1)}
_WEIGHTS_BESIDE_BATCH_NORM = {op: inputs for op, inputs in WEIGHT_INPUTS.items() if op != "BatchNormalization"}
# A sigmoid gate whose mean σ' over a batch is below this cannot be moved by gradient descent.
SATURATED_SLOPE = 1e-4


@dataclasses.dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    lr: float | None = None  # the learning rate of the epoch's last step; None for epoch 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainReport:
    scope: str
    trained_initializers: list[str]  # the initializers and Constant node outputs trained, by name
    trained_parameters: int
    blocks: int
    saturated_gates: list[str]
    # epoch 0, the model as it came in; None when the run resumed from a checkpoint
    baseline: EpochResult | None
    epochs: list[EpochResult] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    device: str = "cpu"
    processes: int = 1
    resumed_from: int | None = None  # the checkpoint's epoch

    def to_dict(self) -> dict:
        measured = self.epochs if self.baseline is None else [self.baseline, *self.epochs]
        return {
            "scope": self.scope,
            "trained_parameters": self.trained_parameters,
            "trained_initializers": self.trained_initializers,
            "se_blocks": self.blocks,
            "saturated_gates": self.saturated_gates,
            "interrupted": self.interrupted,
            "device": self.device,
            "processes": self.processes,
            "resumed_from": self.resumed_from,
            "epochs": [result.to_dict() for result in measured],
        }


def trainable_initializers(
    model: ir.Model, scope: str, *, batch_norm: str = "frozen"
) -> tuple[list[str], list[AttentionBlock]]:
    """The constants `scope` trains (initializers and `Constant` node outputs of the main graph,
    see `se_onnx.ir.constants.constant_source`), in graph order, and the blocks it trains: the SE
    blocks (scope "se", and "all" counts them), or the blocks of every kind (scope "attention").
    BatchNorm's scale and bias are among "all"'s only when `batch_norm` is "train"."""
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
        indices = WEIGHT_INPUTS if batch_norm == "train" else _WEIGHTS_BESIDE_BATCH_NORM
    names = [value_name(value) for value in weight_constants(nodes, indices)]
    if not names:
        raise SeOnnxError(
            f"--train {scope} finds no float weight to train in the model's main graph "
            "(its layers' weights are neither initializers nor Constant nodes)"
        )
    return names, blocks


def _layer_nodes(block: AttentionBlock) -> list[ir.Node]:
    """The nodes whose constant inputs are a block's weights: an SE block's layers; in the other
    kinds every conv, Gemm and MatMul, and an Add that puts a bias on one (as Paddle2ONNX writes
    biases). Other constants stay: a gate's gain, and h_swish's +3, are not weights."""
    if block.se is not None:
        return [node for layer in block.se.layers for node in layer.nodes]
    layers = {node for node in block.nodes if node.op_type in _LAYER_INPUTS and node.op_type != "Add"}
    return [node for node in block.nodes if node in layers or _is_bias_add(node, layers)]


def _is_bias_add(node: ir.Node, layers: set[ir.Node]) -> bool:
    """An Add of a constant to a layer's output (seen through no-ops)."""
    if node.op_type != "Add":
        return False
    return any(value is not None and underlying(value).producer() in layers for value in node.inputs)


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
    options: TrainOptions | None = None,
    *,
    placement: Placement | None = None,
    on_epoch: Callable[[ir.Model, EpochResult], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> tuple[ir.Model, TrainReport]:
    """Train `model` (not modified) with cross-entropy on its class scores; a copy with the trained
    constants written back, and the report.

    `placement` says where this process trains and with how many others (default: one process
    on `options.device`). `on_epoch(model, result)` is called on rank 0 with epoch 0 (the model as
    it came, measured) and after each completed epoch with a model that holds that epoch's weights.
    With `checkpoint`, rank 0 writes the training state there after every epoch, and `resume`
    continues from the one there. On Ctrl-C the copy holds the last completed epoch and the report
    says it was interrupted.
    """
    options = options or TrainOptions()
    options.validate()
    placement = placement or Placement(resolve_device(options.device))
    autocast = check_amp(options.amp, placement.device)
    signature = ClassifierSignature.of(model)  # refuses a model that does not output class scores
    _refuse_non_float32(model)
    names, blocks = trainable_initializers(model, options.train, batch_norm=options.bn)
    module = OnnxModule(model, batch_norm_statistics=options.bn == "train")
    started_from = fingerprint(module) if checkpoint is not None else ""
    # What goes back into the model: the trained constants, and the statistics BatchNorm updates.
    written = [*names, *(name for name in module.batch_norm_statistics_names if name not in names)]
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
    device = placement.device
    module.to(device)
    parameters = [module.parameters_by_name[name] for name in names]
    report = TrainReport(
        options.train,
        names,
        sum(p.numel() for p in parameters),
        len(blocks),
        [],
        None,
        device=str(device),
        processes=placement.world_size,
    )
    workers = options.workers if options.workers is not None else _default_workers(train_data)
    loaders = _Loaders(train_data, val_data, options, placement, workers)
    steps_per_epoch = len(loaders.train)

    with _deterministic(options.seed):
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = build_optimizer(
            list(zip(names, parameters)),
            kind=options.optimizer,
            lr=options.lr,
            weight_decay=options.weight_decay,
            no_decay=no_decay_names(model, names),
        )
        schedule = build_schedule(
            optimizer,
            kind=options.schedule,
            epochs=options.epochs,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=options.warmup_epochs,
        )
        # The scaler keeps fp16's small gradients from flushing to zero; bf16 has float32's range.
        scaler = torch.amp.GradScaler(device.type, enabled=options.amp == "fp16")
        first = 1
        if resume:
            assert checkpoint is not None, "resume needs the checkpoint's path"
            state = load_checkpoint(checkpoint, started_from, options.shaping(placement.world_size))
            first = _restore(state, module, optimizer, schedule, scaler, options.epochs)
            report.resumed_from = first - 1
        else:
            report.saturated_gates = _saturated(module, train_data, gate_inputs, options.batch_size)
            if placement.is_main:
                for key in report.saturated_gates:
                    warnings.warn(
                        f"SE block {key!r} has a saturated gate (mean σ' < {SATURATED_SLOPE:g}): training will "
                        "hardly move it; insert the blocks with --init identity (the trainable identity) instead",
                        stacklevel=2,
                    )
        network: torch.nn.Module = module
        if placement.distributed:
            # Gradients are averaged across processes after each backward pass; every process holds
            # the same weights throughout.
            network = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
        trained = model.clone()

        def forward(runner: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                return runner(x, extra=(logits_name,))[-1].float()

        def measure(loader: DataLoader, label: str, predicted: torch.Tensor | None = None) -> tuple[float, float]:
            """Cross-entropy and accuracy over `loader`'s data, every process's share together. The
            module runs unwrapped: ranks may hold a batch more or less, so nothing per batch may
            wait for the others."""
            module.eval()
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            with torch.no_grad():
                for x, y in _progress(loader, label, options.progress and placement.is_main):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    scores = forward(module, x)
                    loss = F.cross_entropy(scores, y, reduction="sum")
                    guesses = scores.argmax(1)
                    sums += torch.stack(
                        [
                            loss.double(),
                            (guesses == y).sum().double(),
                            torch.tensor(len(y), dtype=torch.float64, device=device),
                        ]
                    )
                    if predicted is not None:
                        predicted += torch.bincount(guesses, minlength=len(predicted)).cpu()
            loss_sum, correct, seen = placement.all_sum(sums.tolist())
            return loss_sum / seen, correct / seen

        def train_epoch(epoch: int) -> tuple[float, float]:
            set_epoch(loaders.train, epoch)
            network.train()
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            label = f"epoch {epoch}/{options.epochs}"
            for x, y in _progress(loaders.train, label, options.progress and placement.is_main):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                scores = forward(network, x)
                loss = F.cross_entropy(scores, y, label_smoothing=options.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if options.grad_clip is not None:
                    scaler.unscale_(optimizer)  # the clip threshold is in the gradients' own units
                    torch.nn.utils.clip_grad_norm_(parameters, options.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                correct = (scores.detach().argmax(1) == y).sum()
                sums += torch.stack(
                    [
                        loss.detach().double() * len(y),
                        correct.double(),
                        torch.tensor(len(y), dtype=torch.float64, device=device),
                    ]
                )
            loss_sum, correct_sum, seen = placement.all_sum(sums.tolist())
            return loss_sum / seen, correct_sum / seen

        def validate(epoch: int, started: float, train: tuple[float, float], lr: float | None) -> EpochResult:
            val_loss, val_accuracy = measure(loaders.val, "validate") if loaders.val is not None else (None, None)
            return EpochResult(epoch, *train, val_loss, val_accuracy, time.perf_counter() - started, lr)

        try:
            if not resume:
                started = time.perf_counter()
                predicted = torch.zeros(signature.classes, dtype=torch.int64)
                before = measure(loaders.measured_train, "epoch 0 (before)", predicted)
                report.baseline = validate(0, started, before, None)
                if placement.is_main:
                    if on_epoch is not None:
                        on_epoch(trained, report.baseline)
                    if options.train != "all":
                        _warn_if_untrained(
                            report.baseline.train_accuracy, np.array(placement.all_sum(predicted.tolist()))
                        )
            for epoch in range(first, options.epochs + 1):
                started = time.perf_counter()
                train = train_epoch(epoch)
                result = validate(epoch, started, train, current_lr(optimizer))
                report.epochs.append(result)
                if placement.is_main:
                    _write_back(trained, module, written)
                    if on_epoch is not None:
                        on_epoch(trained, result)
                    if checkpoint is not None:
                        save_checkpoint(
                            checkpoint,
                            _state(
                                started_from, options, placement, epoch, module, written, optimizer, schedule, scaler
                            ),
                        )
        except KeyboardInterrupt:
            # `trained` still holds the last completed epoch: it is written back only between epochs.
            report.interrupted = True
    return trained, report


class _Loaders:
    """The data loaders of a run: the training data shuffled (and augmented), the training data as
    it is for epoch 0's measurement, and the validation data, each split across the processes."""

    def __init__(
        self, train: Dataset, val: Dataset | None, options: TrainOptions, placement: Placement, workers: int
    ) -> None:
        def loader(data: Dataset, *, shuffle: bool, augment: str = "none") -> DataLoader:
            return make_loader(
                TorchDataset(data, augment=augment, seed=options.seed),
                batch_size=options.batch_size,
                shuffle=shuffle,
                seed=options.seed,
                workers=workers,
                pin_memory=placement.device.type == "cuda",
                rank=placement.rank,
                world_size=placement.world_size,
            )

        self.train = loader(train, shuffle=True, augment=options.augment)
        self.measured_train = loader(train, shuffle=False)
        self.val = loader(val, shuffle=False) if val is not None else None


def _default_workers(data: Dataset) -> int:
    """Data in memory is sliced faster in the main process than sent from workers; image files are
    decoded in up to 4 worker processes, leaving a core to the training step."""
    if not isinstance(data, ImageFolderDataset):
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _state(
    started_from: str,
    options: TrainOptions,
    placement: Placement,
    epoch: int,
    module: OnnxModule,
    written: list[str],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> dict:
    """What a checkpoint holds after `epoch`: enough to go on as if the run had never stopped."""
    return {
        "fingerprint": started_from,
        "options": options.shaping(placement.world_size),
        "epoch": epoch,
        "parameters": {name: module.parameters_by_name[name].detach().cpu() for name in written},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {
            "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def _restore(
    state: dict,
    module: OnnxModule,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epochs: int,
) -> int:
    """Put a checkpoint's state back; the first epoch left to train."""
    if state["epoch"] >= epochs:
        raise SeOnnxError(f"--resume: the checkpoint already holds all {epochs} epochs; nothing is left to train")
    with torch.no_grad():
        for name, tensor in state["parameters"].items():
            module.parameters_by_name[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    scaler.load_state_dict(state["scaler"])
    torch.random.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["epoch"]) + 1


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


def _write_back(model: ir.Model, module: OnnxModule, names: list[str]) -> None:
    """Copy the trained parameters into `model`'s initializers and Constant nodes of the same
    names, each in its own dtype and form."""
    values = {value.name: value for value in _main_graph_values(model)}
    for name in names:
        set_constant(values[name], module.parameters_by_name[name].detach().cpu().numpy())


def _main_graph_values(model: ir.Model) -> Iterator[ir.Value]:
    yield from model.graph.initializers.values()
    for node in model.graph:
        yield from node.outputs


def _saturated(module: OnnxModule, data: Dataset, gate_inputs: dict[str, str], batch_size: int) -> list[str]:
    """The blocks whose sigmoid gate has a vanishing slope on the first batch of data."""
    if not gate_inputs:
        return []
    x, _ = next(data.batches(batch_size))
    device = next(module.parameters()).device
    with torch.no_grad():
        values = module(torch.from_numpy(x).to(device), extra=tuple(gate_inputs.values()))[-len(gate_inputs) :]
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
    filling = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN, to expose reads of uninitialised
    # memory: a debugging aid that reproducibility does not need, and a fifth of a CPU training step.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = filling  # type: ignore[attr-defined]
        torch.random.set_rng_state(state)


def _progress(loader: DataLoader, label: str, enabled: bool) -> Iterator:
    """`loader`'s batches, with a progress bar on stderr when `enabled`."""
    batches = _from_workers(loader)
    if not enabled:
        return batches
    from tqdm import tqdm

    return iter(tqdm(batches, desc=label, unit="batch", total=len(loader), file=sys.stderr, leave=False))


def _from_workers(loader: DataLoader) -> Iterator:
    """`loader`'s batches; an error a worker process met reading data (an unreadable image) is
    raised again as its own one line, without the worker's traceback that PyTorch adds to it."""
    try:
        yield from loader
    except SeOnnxError as error:
        message = str(error)
        if "Original Traceback" not in message:
            raise
        raise SeOnnxError(message.rstrip().rpartition("SeOnnxError: ")[2]) from None


def plot_history(report: TrainReport, path) -> None:
    """Loss and accuracy per epoch (train and validation) as a PNG; epoch 0 is the untrained model."""
    from matplotlib.ticker import MaxNLocator

    results = [*([report.baseline] if report.baseline is not None else []), *report.epochs]
    epochs = [r.epoch for r in results]
    figure, (loss_axis, accuracy_axis) = pyplot().subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((loss_axis, "loss", "cross-entropy loss"), (accuracy_axis, "accuracy", "top-1 accuracy")):
        axis.plot(epochs, [getattr(r, f"train_{key}") for r in results], "o-", label="train")
        if results[0].val_loss is not None:
            axis.plot(epochs, [getattr(r, f"val_{key}") for r in results], "s-", label="validation")
        axis.set_xlabel("epoch (0: before training)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"se-onnx train --train {report.scope}: {report.trained_parameters:,} parameters trained")
    figure.tight_layout()
    save_figure(figure, path)
