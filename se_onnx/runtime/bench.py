"""Latency benchmarks in ONNX Runtime: one model, or two models interleaved.

Two models run interleaved (A B A B …) on the same seeded inputs, so slow drifts of the machine
(thermal throttling, other processes) hit both alike; their ratio is taken pair by pair, which
cancels such drifts far better than a ratio of two separate medians.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from se_onnx.errors import SeOnnxError
from se_onnx.runtime.sessions import make_session, random_inputs
from se_onnx.runtime.stats import Latency, Spread, pairwise_ratio
from se_onnx.runtime.timing import time_interleaved

if TYPE_CHECKING:
    from se_onnx.runtime.profile import SeCost


@dataclasses.dataclass
class ModelTiming:
    """One model's latency and throughput; `seconds` (every timed run) is left out of the JSON."""

    name: str
    latency_ms: Latency
    throughput: float  # items per second: batch / median latency
    seconds: list[float] = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "latency_ms": dataclasses.asdict(self.latency_ms), "throughput": self.throughput}


@dataclasses.dataclass
class BenchReport:
    """The JSON report of `se-onnx bench` (keys documented in the README)."""

    models: list[ModelTiming]
    provider: str
    batch: int
    runs: int
    warmup: int
    threads: int
    ratio: Spread | None = None  # models[1] / models[0], run by run; two models only
    se_cost: SeCost | None = None

    def to_dict(self) -> dict:
        return {
            "models": [model.to_dict() for model in self.models],
            "provider": self.provider,
            "batch": self.batch,
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "ratio": dataclasses.asdict(self.ratio) if self.ratio else None,
            "se_cost": self.se_cost.to_dict() if self.se_cost else None,
        }


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    provider: str = "cpu"
    batch: int | None = None  # symbolic batch dims; None: the model's fixed batch, else 1
    runs: int = 50
    warmup: int = 5
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime choose
    seed: int = 0
    progress: bool = False  # a progress bar on stderr for long runs

    def validate(self) -> None:
        if self.runs < 1:
            raise SeOnnxError(f"--runs must be at least 1, not {self.runs}")
        if self.warmup < 0:
            raise SeOnnxError(f"--warmup must be 0 or more, not {self.warmup}")
        if self.batch is not None and self.batch < 1:
            raise SeOnnxError(f"--batch must be at least 1, not {self.batch}")
        if self.threads < 0:
            raise SeOnnxError(f"--threads must be 0 or more, not {self.threads}")


def benchmark(
    models: Sequence[str | os.PathLike | bytes],
    options: BenchOptions = BenchOptions(),
    *,
    names: Sequence[str] | None = None,
) -> BenchReport:
    """Time one or two models (files or serialized bytes); two run interleaved on the same inputs."""
    options.validate()
    if not 1 <= len(models) <= 2:
        raise SeOnnxError(f"bench takes one or two models, not {len(models)}")
    names = list(names) if names is not None else [label_of(model) for model in models]
    # Two sessions timed in turn must not spin: one's busy-waiting threads would steal the cores of
    # the other's run (the pairwise ratio's p10–p90 spread was 3× wider with spinning on).
    spinning = len(models) == 1
    sessions = [session_for(model, name, options, spinning=spinning) for model, name in zip(models, names)]
    if len(sessions) == 2:
        _check_same_inputs(sessions[0], sessions[1], names)
    feeds, batch = feeds_for(sessions[0], options)
    tasks = [runner_for(session, feeds, name) for session, name in zip(sessions, names)]
    seconds = time_interleaved(
        tasks,
        runs=options.runs,
        warmup=options.warmup,
        progress=options.progress,
        label=" vs ".join(names),
        rotate=True,
    )
    timings = [
        ModelTiming(name, Latency.of(series), batch / statistics.median(series), series)
        for name, series in zip(names, seconds)
    ]
    ratio = pairwise_ratio(seconds[0], seconds[1]) if len(seconds) == 2 else None
    return BenchReport(timings, options.provider, batch, options.runs, options.warmup, options.threads, ratio)


def label_of(model: str | os.PathLike | bytes) -> str:
    return "model" if isinstance(model, bytes) else os.fspath(model)


def session_for(
    model: str | os.PathLike | bytes, name: str, options: BenchOptions, *, profile: bool = False, spinning: bool = True
):
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise SeOnnxError(f"{name}: no such file")
    return make_session(
        model, options.provider, intra_op_threads=options.threads, enable_profiling=profile, spinning=spinning
    )


def feeds_for(session, options: BenchOptions) -> tuple[dict[str, np.ndarray], int]:
    """The seeded feeds and the batch they carry: the first input's first dimension."""
    first = session.get_inputs()[0] if session.get_inputs() else None
    fixed = first.shape[0] if first is not None and first.shape and isinstance(first.shape[0], int) else None
    if first is not None and fixed is not None and options.batch is not None and options.batch != fixed:
        raise SeOnnxError(
            f"the model's input {first.name!r} has a fixed batch of {fixed}; --batch {options.batch} does not apply"
        )
    feeds = random_inputs(session, batch=options.batch or 1, seed=options.seed)
    batch = feeds[first.name].shape[0] if first is not None and feeds[first.name].ndim else 1
    return feeds, int(batch)


def _check_same_inputs(session_a, session_b, names: Sequence[str]) -> None:
    """Same input names, types and shapes; symbolic dims match each other whatever their names."""
    inputs_a, inputs_b = (sorted((m.name, m.type, m.shape) for m in s.get_inputs()) for s in (session_a, session_b))

    def comparable(inputs):
        return [(name, dtype, [d if isinstance(d, int) else None for d in shape]) for name, dtype, shape in inputs]

    if comparable(inputs_a) != comparable(inputs_b):
        raise SeOnnxError(
            f"{names[0]} and {names[1]} take different inputs: {_describe(inputs_a)} vs {_describe(inputs_b)}"
        )


def _describe(inputs: Sequence[tuple[str, str, list]]) -> str:
    return ", ".join(f"{name} {dtype} {shape}" for name, dtype, shape in inputs) or "none"


def runner_for(session, feeds: dict[str, np.ndarray], name: str) -> Callable[[], object]:
    def run() -> object:
        try:
            return session.run(None, feeds)
        except Exception as error:  # ORT raises its own exception types for bad feeds
            raise SeOnnxError(f"{name}: ONNX Runtime could not run it: {' '.join(str(error).split())}") from None

    return run
