"""The fastest SE form for a model: each candidate form timed in ONNX Runtime on the model itself.

The candidates are the original, the canonical form and torchvision's conv form
(`se_onnx.passes.fuse`). The original is kept unless a candidate beats it by more than `MIN_GAIN`
(median of run-by-run ratios), so the result is never measurably slower. Which form wins depends
on the model, the provider and the machine (the fuse module's docstring says why), so this
measures instead of assuming.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Mapping

import onnx_ir as ir

from se_onnx.passes.fuse import FuseReport, fuse_se
from se_onnx.runtime.sessions import make_session, model_bytes, random_inputs
from se_onnx.runtime.stats import pairwise_ratio
from se_onnx.runtime.timing import time_interleaved

# What is timed: the model as given, and the fuse pass's forms with a plain-op layout.
CANDIDATES = ("original", "canonical", "conv")
# A candidate must be this much faster than the original (median ratio below 1 - MIN_GAIN) to be
# chosen: smaller gains are within run-to-run noise and could be a slowdown in disguise.
MIN_GAIN = 0.02


@dataclasses.dataclass(frozen=True)
class FormTiming:
    """One candidate form's latency, measured interleaved with the original's."""

    form: str
    median_ms: float  # median latency of one run
    ratio: float  # median over rounds of (this form's run / the original's run in the same round)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FastestReport(FuseReport):
    """The fuse report with the provider the forms were timed on and each form's timing."""

    provider: str = "cpu"
    timings: list[FormTiming] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return super().to_dict() | {"provider": self.provider, "timings": [timing.to_dict() for timing in self.timings]}


def fuse_fastest(
    model: ir.Model, *, provider: str = "cpu", runs: int = 50, warmup: int = 5, batch: int = 1
) -> tuple[ir.Model, FastestReport]:
    """A copy of `model` in the candidate form that runs fastest on `provider` (the original
    itself unless another form is clearly faster), and the report with every form's timing. A
    model without SE blocks is not timed: the copy comes back with the fuse pass's reason in
    `nothing_to_do`."""
    canonical, report = fuse_se(model, "canonical")
    if report.nothing_to_do:
        return canonical, FastestReport("fastest", "original", [], provider, nothing_to_do=report.nothing_to_do)
    candidates = {"original": model, "canonical": canonical, "conv": fuse_se(model, "conv")[0]}
    timings = measure_forms(candidates, provider=provider, runs=runs, warmup=warmup, batch=batch)
    best = min(timings, key=lambda timing: timing.ratio)
    written = best.form if best.ratio < 1.0 - MIN_GAIN else "original"
    result = model.clone() if written == "original" else candidates[written]
    return result, FastestReport("fastest", written, report.blocks, provider, timings)


def measure_forms(
    models: Mapping[str, ir.Model], *, provider: str = "cpu", runs: int = 50, warmup: int = 5, batch: int = 1
) -> list[FormTiming]:
    """Latency of each model relative to ``models["original"]`` in ONNX Runtime.

    The models run interleaved (A B C A B C …, `time_interleaved`) on the same seeded inputs, and
    each form's ratio is taken run by run against the original's run in the same round, which
    cancels slow drifts of the machine; the median discards outliers. The order rotates (A B C,
    then B C A, then C A B, an equal share of the runs each) so that no form always runs right
    after another one. The sessions' threads do not spin between runs: a session's spinning
    threads would otherwise steal the cores of the session that runs after it.
    """
    if "original" not in models:
        raise ValueError("measure_forms needs the original model under 'original'")
    sessions = {name: make_session(model_bytes(model), provider, spinning=False) for name, model in models.items()}
    feeds = random_inputs(sessions["original"], batch=batch)
    names = list(sessions)
    series: dict[str, list[float]] = {name: [] for name in names}
    for shift in range(len(names)):
        order = names[shift:] + names[:shift]
        tasks = [functools.partial(sessions[name].run, None, feeds) for name in order]
        share = max(1, runs // len(names) + (shift < runs % len(names)))
        for name, seconds in zip(order, time_interleaved(tasks, runs=share, warmup=warmup if shift == 0 else 0)):
            series[name].extend(seconds)
    return [
        FormTiming(
            form=name,
            median_ms=statistics.median(series[name]) * 1e3,
            ratio=pairwise_ratio(series["original"], series[name]).median,
        )
        for name in names
    ]
