"""What a model's SE blocks cost: the model against its stripped copy, timed interleaved, and the
difference broken down by role and op type with ONNX Runtime's profiler."""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.attention import KIND_NAMES
from se_onnx.ir.model_io import load_model, uses_external_data
from se_onnx.passes.strip import strip_se
from se_onnx.runtime.bench import (
    BenchOptions,
    BenchReport,
    benchmark,
    feeds_for,
    label_of,
    runner_for,
    session_for,
)
from se_onnx.runtime.sessions import model_bytes
from se_onnx.runtime.stats import Difference, Spread
from se_onnx.runtime.timing import time_interleaved

# The roles a breakdown attributes time to: kernels of the SE blocks' own nodes, ONNX Runtime's
# layout conversions (into and out of its blocked NCHWc layout), the kernels of the rest of the
# model, and the part of each run spent outside any kernel (the executor, allocations, and the
# profiler's own bookkeeping).
LAYOUT_ROLE, MODEL_ROLE, BETWEEN_ROLE = "layout", "model", "between kernels"
SE_ROLE = "SE block"  # block_role("se"); the other kinds' roles are named the same way


_LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})


@dataclasses.dataclass(frozen=True)
class OpTime:
    """Time per batch one op type spends in one role, from ONNX Runtime's profiler (ms): each
    model's median over its profiled runs, and the difference run by run."""

    role: str
    op_type: str  # "" for the time between kernels
    se_ms: float
    stripped_ms: float
    diff: Difference  # SE model − stripped, paired profiled runs

    @property
    def diff_ms(self) -> float:
        return self.diff.median

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "op_type": self.op_type,
            "se_ms": self.se_ms,
            "stripped_ms": self.stripped_ms,
            "diff_ms": self.diff_ms,
            "diff": self.diff.to_dict(),
        }


@dataclasses.dataclass
class SeCost:
    """What a model's SE blocks (or blocks of another kind) cost: the model over its stripped copy,
    run by run, and where that time goes."""

    blocks: int
    ratio: Spread  # SE model / stripped model, timed runs
    ms_per_batch: Difference  # SE model − stripped model, timed runs (the measured difference)
    profiled_runs: int  # per model, interleaved, after as many warm-up runs as the timed ones
    profiled_ms_per_batch: Difference  # the same difference in the profiled runs
    ops: list[OpTime]  # every (role, op type) either model runs, largest difference first
    kinds: dict[str, int] = dataclasses.field(default_factory=lambda: {"se": 0})  # blocks of each kind

    @property
    def accounted_ms(self) -> float:
        """The breakdown's sum: what the per-op differences add up to."""
        return float(sum(op.diff_ms for op in self.ops))

    @property
    def tolerance_ms(self) -> float:
        """How far the breakdown's sum may be from the measured difference and still agree with
        it: the half-widths of the two medians' confidence intervals (timed and profiled runs)
        added, since either may be off by that much."""
        return sum((d.ci_high - d.ci_low) / 2 for d in (self.ms_per_batch, self.profiled_ms_per_batch))

    @property
    def adds_up(self) -> bool:
        return abs(self.accounted_ms - self.ms_per_batch.median) <= self.tolerance_ms

    @property
    def within_noise(self) -> bool:
        """Whether the timed runs cannot tell the SE model from its stripped copy."""
        return self.ms_per_batch.within_noise

    def to_dict(self) -> dict:
        return {
            "blocks": self.blocks,
            "kinds": self.kinds,
            "ratio": dataclasses.asdict(self.ratio),
            "ms_per_batch": self.ms_per_batch.to_dict(),
            "profiled_runs": self.profiled_runs,
            "profiled_ms_per_batch": self.profiled_ms_per_batch.to_dict(),
            "accounted_ms": self.accounted_ms,
            "tolerance_ms": self.tolerance_ms,
            "adds_up": self.adds_up,
            "within_noise": self.within_noise,
            "ops": [op.to_dict() for op in self.ops],
        }


def se_cost(model: str | os.PathLike, options: BenchOptions = BenchOptions(), block: str = "se") -> BenchReport:
    """Time `model` against a copy with its blocks of kind `block` stripped ("se" by default, another
    kind, or "all"; built in memory), interleaved, and break the difference down by role and op type
    with ONNX Runtime's profiler; each kind's nodes are a role of their own ("SE block", "ECA block"…).

    The report's models are [stripped, model], so its ratio is what the blocks cost.
    """
    options.validate()
    with_blocks = load_model(model)
    if uses_external_data(with_blocks):
        # Serialized bytes cannot point at external data, so both copies carry their weights inline.
        with_blocks = ir.external_data.load_to_model(with_blocks)
    stripped, strip_report = strip_se(with_blocks, block)
    if strip_report.nothing_to_do:
        name = "attention" if block == "all" else KIND_NAMES[block]
        raise SeOnnxError(f"{model}: --se-cost needs a model with {name} blocks, and it has none")
    label = label_of(model)
    roles = {name: block_role(found.get("kind", block)) for found in strip_report.blocks for name in found["nodes"]}
    what = "blocks" if block == "all" else f"{KIND_NAMES[block]} blocks"
    return _cost_report(
        [model_bytes(stripped), model_bytes(with_blocks)],
        [f"{label} without {what}", label],
        options,
        roles,
        Counter(found.get("kind", block) for found in strip_report.blocks),
    )


def block_role(kind: str) -> str:
    """The breakdown's role for the nodes of a block of `kind`: "SE block", "ECA block", …"""
    return f"{KIND_NAMES[kind]} block"


def _cost_report(
    sources: Sequence[bytes], names: Sequence[str], options: BenchOptions, roles: Mapping[str, str], kinds: Counter
) -> BenchReport:
    """Time sources[1] against sources[0], then profile both as many runs again, interleaved the
    same way, so that each op's difference is taken run by run like the measured one. The profiled
    sessions are separate from the timed ones because the profiler slows every node."""
    report = benchmark(sources, options, names=names)
    assert report.ratio is not None  # benchmark() gives one for two models
    samples_stripped, samples_se = (timing.seconds for timing in report.models)
    stripped_runs, se_runs = _profile_interleaved(sources, options, _role_classifier(roles))
    report.se_cost = SeCost(
        blocks=sum(kinds.values()),
        kinds=dict(kinds),
        ratio=report.ratio,
        ms_per_batch=Difference.of([(b - a) * 1e3 for a, b in zip(samples_stripped, samples_se)]),
        profiled_runs=len(se_runs),
        profiled_ms_per_batch=Difference.of(
            [sum(b.values()) - sum(a.values()) for a, b in zip(stripped_runs, se_runs)]
        ),
        ops=op_differences(stripped_runs, se_runs),
    )
    return report


def op_differences(
    baseline_runs: Sequence[Mapping[tuple[str, str], float]], candidate_runs: Sequence[Mapping[tuple[str, str], float]]
) -> list[OpTime]:
    """Per (role, op type): each model's median time per run, and the difference run by run
    (run i of the candidate against run i of the baseline); largest median difference first."""
    if len(baseline_runs) != len(candidate_runs) or not baseline_runs:
        raise ValueError("op_differences needs two equally long, non-empty series of runs")
    keys = {key for run in [*baseline_runs, *candidate_runs] for key in run}
    ops = []
    for role, op_type in keys:
        base = [run.get((role, op_type), 0.0) for run in baseline_runs]
        cand = [run.get((role, op_type), 0.0) for run in candidate_runs]
        ops.append(
            OpTime(
                role,
                op_type,
                statistics.median(cand),
                statistics.median(base),
                Difference.of([c - b for b, c in zip(base, cand)]),
            )
        )
    return sorted(ops, key=lambda op: (-op.diff_ms, op.role, op.op_type))


def _role_classifier(roles: Mapping[str, str]) -> Callable[[str, str], str]:
    """The role of a kernel from its node's name and op type in ONNX Runtime's optimized graph,
    where a node fused with its activation is named "fused <first node>"; `roles` names the role
    of each block node."""

    def role(node: str, op_type: str) -> str:
        found = roles.get(node) or roles.get(node.removeprefix("fused "))
        if found is not None:
            return found
        return LAYOUT_ROLE if op_type in _LAYOUT_OPS else MODEL_ROLE

    return role


def _profile_interleaved(
    models: Sequence[bytes], options: BenchOptions, role_of: Callable[[str, str], str]
) -> list[list[dict[tuple[str, str], float]]]:
    """Each model's time per (role, op type), run by run, from profiled sessions run interleaved
    like the timed ones (same warm-up, runs and rotation); the traces are deleted."""
    sessions = [session_for(model, "model", options, profile=True, spinning=False) for model in models]
    feeds, _ = feeds_for(sessions[0], options)
    try:
        time_interleaved(
            [runner_for(session, feeds, "model") for session in sessions],
            runs=options.runs,
            warmup=options.warmup,
            rotate=True,
        )
    finally:
        # ONNX Runtime writes a trace when profiling ends; it goes even when a run failed.
        traces = [Path(session.end_profiling()) for session in sessions]
        try:
            events = [json.loads(trace.read_text()) for trace in traces]
        finally:
            for trace in traces:
                trace.unlink(missing_ok=True)
    return [_times_per_run(trace, skip_runs=options.warmup, role_of=role_of) for trace in events]


def _times_per_run(
    events: Sequence[dict], *, skip_runs: int, role_of: Callable[[str, str], str]
) -> list[dict[tuple[str, str], float]]:
    """Per run after the first `skip_runs`: ms of kernel time per (role, op type), and the rest of
    the run's time under (BETWEEN_ROLE, ""), so that each run's entries add up to its duration."""
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = [start for start, _ in runs]
    times: list[dict[tuple[str, str], float]] = [{} for _ in runs]
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index < 0 or event["ts"] > starts[index] + runs[index][1]:
            continue  # a kernel outside any run (none are, but a trace is not ours to trust)
        op_type = event.get("args", {}).get("op_name", "?")
        key = (role_of(event["name"].removesuffix("_kernel_time"), op_type), op_type)
        times[index][key] = times[index].get(key, 0.0) + event["dur"] / 1e3
    for run_times, (_, duration) in zip(times, runs):
        run_times[(BETWEEN_ROLE, "")] = duration / 1e3 - sum(run_times.values())
    return times[skip_runs:]
