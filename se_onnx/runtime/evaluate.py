"""Accuracy, latency, parameters and FLOPs of a classifier in ONNX Runtime, alone or side by side
with other models (the same model without SE blocks, or with other attention blocks). No PyTorch needed."""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.constants import count_parameters
from se_onnx.runtime.datasets import Dataset
from se_onnx.runtime.sessions import make_session
from se_onnx.runtime.stats import Spread, pairwise_ratio
from se_onnx.runtime.timing import time_interleaved

# Ops whose cost is counted as 2 × multiply-adds; every other op counts one FLOP per output element.
_MATMUL_OPS = frozenset({"Conv", "Gemm", "MatMul"})


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One model on one data set."""

    model: str
    samples: int
    top1: float
    top5: float  # top-k with k = min(5, classes)
    loss: float  # mean cross-entropy of the softmax of the outputs
    latency_ms: float  # median of single-sample runs
    latency_p90_ms: float
    parameters: int  # elements of the layers' float weights and biases (see `count_cost`)
    flops: int  # per sample; see `count_cost`
    provider: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Models on the same data, the first (A) the baseline: all are timed interleaved, and each
    other's latency ratio to A is taken run by run."""

    evaluations: list[Evaluation]  # A, then B, C, …
    ratios: list[Spread]  # latency of B, C, … over A's, run by run

    @property
    def a(self) -> Evaluation:
        return self.evaluations[0]

    @property
    def others(self) -> list[Evaluation]:
        return self.evaluations[1:]

    def difference(self, index: int) -> dict:
        """Model `index` (1 for B) against A."""
        other, ratio = self.evaluations[index], self.ratios[index - 1]
        return {
            "model": other.model,
            "top1": other.top1 - self.a.top1,
            "top5": other.top5 - self.a.top5,
            "parameters": other.parameters - self.a.parameters,
            "flops": other.flops - self.a.flops,
            "latency_ratio": ratio.median,
            "latency_ratio_p10": ratio.p10,
            "latency_ratio_p90": ratio.p90,
        }

    def to_dict(self) -> dict:
        # "a", "b" and "difference" are the two-model report as it has always been (B is the first
        # other model); "models" and "differences" list every model.
        return {
            "a": self.a.to_dict(),
            "b": self.evaluations[1].to_dict(),
            "difference": {key: value for key, value in self.difference(1).items() if key != "model"},
            "models": [evaluation.to_dict() for evaluation in self.evaluations],
            "differences": [self.difference(index) for index in range(1, len(self.evaluations))],
        }


def count_cost(model_path: str | os.PathLike, sample_shape: Sequence[int]) -> tuple[int, int]:
    """(parameters, FLOPs per sample) of a model, from its initializers and inferred shapes.

    FLOPs are 2 × multiply-adds for Conv, Gemm and MatMul (the usual convention, which leaves out
    biases) plus one per output element of every other op (activations, adds, pooling, the SE
    gate's rescale), which is what SE blocks mostly add.
    """
    proto = onnx.load(os.fspath(model_path), load_external_data=False)
    graph = proto.graph
    initializer_names = {tensor.name for tensor in graph.initializer}
    parameters = count_parameters(ir.traversal.RecursiveGraphIterator(ir.from_proto(proto).graph))
    image = next(value for value in graph.input if value.name not in initializer_names)
    dims = image.type.tensor_type.shape.dim
    del dims[:]
    for size in (1, *sample_shape):
        dims.add().dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {
        value.name: [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        for value in (*inferred.value_info, *inferred.input, *inferred.output)
    }
    shapes.update({tensor.name: list(tensor.dims) for tensor in graph.initializer})
    flops = 0
    for node in graph.node:
        output = shapes.get(node.output[0]) if node.output else None
        if output is None:
            continue
        elements = int(np.prod(output, dtype=np.int64))
        if node.op_type in _MATMUL_OPS and len(node.input) > 1 and node.input[1] in shapes:
            weight = shapes[node.input[1]]
            if node.op_type == "Conv":
                reduction = int(np.prod(weight[1:], dtype=np.int64))  # in/group × kernel
            elif node.op_type == "Gemm":
                transposed = any(a.name == "transB" and a.i for a in node.attribute)
                reduction = weight[1] if transposed else weight[0]
            else:
                reduction = weight[-2] if len(weight) > 1 else weight[0]
            flops += 2 * elements * int(reduction)
        elif node.op_type not in ("Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
            flops += elements
    return parameters, flops


def evaluate_model(
    model_path: str | os.PathLike,
    data: Dataset,
    *,
    provider: str = "cpu",
    batch_size: int = 64,
    latency_runs: int = 100,
) -> Evaluation:
    """Accuracy over `data` and single-sample latency of one model."""
    return _evaluate([model_path], data, provider, batch_size, latency_runs)[0][0]


def compare_models(
    a: str | os.PathLike,
    others: Sequence[str | os.PathLike],
    data: Dataset,
    *,
    provider: str = "cpu",
    batch_size: int = 64,
    latency_runs: int = 100,
) -> Comparison:
    """A and each of `others` on the same data; their single-sample latencies are timed interleaved."""
    if not others:
        raise SeOnnxError("a comparison needs at least one model besides the first")
    evaluations, seconds = _evaluate([a, *others], data, provider, batch_size, latency_runs)
    return Comparison(evaluations, [pairwise_ratio(seconds[0], series) for series in seconds[1:]])


def _evaluate(
    paths: Sequence[str | os.PathLike], data: Dataset, provider: str, batch_size: int, latency_runs: int
) -> tuple[list[Evaluation], list[list[float]]]:
    """Each model's evaluation, and its single-sample latencies in seconds, run by run."""
    if batch_size < 1 or latency_runs < 1:
        raise SeOnnxError("--batch-size and --runs must be at least 1")
    # Sessions timed in turn must not spin, or one's waiting threads slow the other's run.
    sessions = [make_session(path, provider, spinning=len(paths) == 1) for path in paths]
    evaluations_scores = [_scores(session, data, batch_size, path) for session, path in zip(sessions, paths)]
    sample = data.read(np.arange(1))
    tasks = [_runner(session, sample) for session in sessions]
    seconds = time_interleaved(
        tasks, runs=latency_runs, warmup=min(10, latency_runs), rotate=True, progress=True, label="latency"
    )
    evaluations = []
    for path, scores, series in zip(paths, evaluations_scores, seconds):
        top1, top5, loss = _accuracy(scores, data.y)
        parameters, flops = count_cost(path, data.sample_shape)
        ms = np.asarray(series) * 1e3
        evaluations.append(
            Evaluation(
                os.fspath(path),
                len(data),
                top1,
                top5,
                loss,
                float(statistics.median(ms)),
                float(np.percentile(ms, 90)),
                parameters,
                flops,
                provider,
            )
        )
    return evaluations, seconds


def _scores(session, data: Dataset, batch_size: int, path) -> np.ndarray:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise SeOnnxError(f"{path}: has {len(inputs)} inputs; evaluate takes a classifier with one input")
    name = inputs[0].name
    outputs = [session.run(None, {name: x})[0] for x, _ in data.batches(batch_size)]
    scores = np.concatenate(outputs)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise SeOnnxError(f"{path}: output is {list(scores.shape)}, not class scores (N × classes)")
    if data.y.max() >= scores.shape[1]:
        raise SeOnnxError(f"{path}: labels go up to {data.y.max()}, but the model scores {scores.shape[1]} classes")
    return scores.astype(np.float64)


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    k = min(5, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    top1 = float(np.mean(top[:, 0] == labels))
    top5 = float(np.mean((top == labels[:, None]).any(axis=1)))
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probabilities[np.arange(len(labels)), labels].mean())
    return top1, top5, loss


def _runner(session, sample: np.ndarray):
    feeds = {session.get_inputs()[0].name: sample}
    return lambda: session.run(None, feeds)
