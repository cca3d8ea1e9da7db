"""Latency benchmarks in ONNX Runtime: one model, two models interleaved, or a model against its stripped copy.

Two models run interleaved (A B A B …) on the same seeded inputs, so slow drifts of the machine
(thermal throttling, other processes) hit both alike; their ratio is taken pair by pair, which
cancels such drifts far better than a ratio of two separate medians.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.model_io import atomic_output, load_model, uses_external_data
from se_onnx.runtime import make_session, random_inputs
from se_onnx.strip import strip_se

# A progress bar appears only on runs expected to take longer than this.
_LONG_RUN_S = 3.0


@dataclasses.dataclass(frozen=True)
class Latency:
    """Latency of one run (one batch), in milliseconds."""

    median: float
    p90: float
    mean: float
    min: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.mean()), float(ms.min()))


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of pair-by-pair values, with their 10th and 90th percentiles."""

    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        array = np.asarray(values, dtype=np.float64)
        return cls(float(np.median(array)), float(np.percentile(array, 10)), float(np.percentile(array, 90)))


def pairwise_ratio(a: Sequence[float], b: Sequence[float]) -> Spread:
    """B/A run by run (run i of B over run i of A), summarized."""
    if len(a) != len(b) or not a:
        raise ValueError("pairwise_ratio needs two equally long, non-empty series")
    return Spread.of([tb / ta for ta, tb in zip(a, b)])


@dataclasses.dataclass
class ModelTiming:
    """One model's latency and throughput; `seconds` (every timed run) is left out of the JSON."""

    name: str
    latency_ms: Latency
    throughput: float  # items per second: batch / median latency
    seconds: list[float] = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "latency_ms": dataclasses.asdict(self.latency_ms), "throughput": self.throughput}


@dataclasses.dataclass(frozen=True)
class Difference:
    """A difference taken run by run (B − A, paired runs): its median, the p10–p90 spread of single
    runs, and a 95 % confidence interval of the median (`ci_low`–`ci_high`)."""

    median: float
    p10: float
    p90: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Difference:
        array = np.sort(np.asarray(values, dtype=np.float64))
        low, high = median_interval(array)
        return cls(float(np.median(array)), float(np.percentile(array, 10)), float(np.percentile(array, 90)), low, high)

    @property
    def within_noise(self) -> bool:
        """Whether the runs cannot tell this difference from zero (its interval holds 0)."""
        return self.ci_low <= 0.0 <= self.ci_high

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"within_noise": self.within_noise}


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the order statistics that the sign
    test puts around it (normal approximation of the binomial; the whole range for a few values)."""
    array = np.sort(np.asarray(values, dtype=np.float64))
    if not array.size:
        raise ValueError("median_interval needs at least one value")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    lowest = max(int(np.floor((array.size - z * np.sqrt(array.size)) / 2)), 0)
    return float(array[lowest]), float(array[array.size - 1 - lowest])


# The roles a breakdown attributes time to: kernels of the SE blocks' own nodes, ONNX Runtime's
# layout conversions (into and out of its blocked NCHWc layout), the kernels of the rest of the
# model, and the part of each run spent outside any kernel (the executor, allocations, and the
# profiler's own bookkeeping).
SE_ROLE, LAYOUT_ROLE, MODEL_ROLE, BETWEEN_ROLE = "SE block", "layout", "model", "between kernels"
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
    """What a model's SE blocks cost: the model over its stripped copy, run by run, and where
    that time goes."""

    blocks: int
    ratio: Spread  # SE model / stripped model, timed runs
    ms_per_batch: Difference  # SE model − stripped model, timed runs (the measured difference)
    profiled_runs: int  # per model, interleaved, after as many warm-up runs as the timed ones
    profiled_ms_per_batch: Difference  # the same difference in the profiled runs
    ops: list[OpTime]  # every (role, op type) either model runs, largest difference first

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


def time_interleaved(
    tasks: Sequence[Callable[[], object]],
    *,
    runs: int,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    progress: bool = False,
    label: str = "bench",
    rotate: bool = False,
) -> list[list[float]]:
    """Call the tasks in turn (A B A B …), `warmup` rounds untimed then `runs` timed rounds;
    each task's durations in seconds, round by round.

    `rotate` starts each round one task later (A B, B A, A B … for two), so that no task always
    runs right after the same other one, which would bias their ratio by whatever the earlier task
    leaves behind (caches, clock speed).
    """
    if runs < 1:
        raise SeOnnxError(f"--runs must be at least 1, not {runs}")
    started = clock()
    for _ in range(warmup):
        for task in tasks:
            task()
    warmup_round_s = (clock() - started) / warmup if warmup else None
    seconds: list[list[float]] = [[] for _ in tasks]
    bar = None
    try:
        for index in range(runs):
            first = index % len(tasks) if rotate else 0
            for position in [*range(first, len(tasks)), *range(first)]:
                start = clock()
                tasks[position]()
                seconds[position].append(clock() - start)
            if bar is not None:
                bar.update()
            elif index == 0 and progress:
                # Expected length from a warm-up round, or without warm-up from this first round.
                round_s = warmup_round_s if warmup_round_s is not None else sum(d[0] for d in seconds)
                if round_s * runs > _LONG_RUN_S:
                    bar = _progress_bar(runs, label)
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    return seconds


def benchmark(models: Sequence[str | os.PathLike | bytes], options: BenchOptions = BenchOptions(), *, names: Sequence[str] | None = None) -> BenchReport:
    """Time one or two models (files or serialized bytes); two run interleaved on the same inputs."""
    options.validate()
    if not 1 <= len(models) <= 2:
        raise SeOnnxError(f"bench takes one or two models, not {len(models)}")
    names = list(names) if names is not None else [_label(model) for model in models]
    # Two sessions timed in turn must not spin: one's busy-waiting threads would steal the cores of
    # the other's run (the pairwise ratio's p10–p90 spread was 3× wider with spinning on).
    spinning = len(models) == 1
    sessions = [_session(model, name, options, spinning=spinning) for model, name in zip(models, names)]
    if len(sessions) == 2:
        _check_same_inputs(sessions[0], sessions[1], names)
    feeds, batch = _inputs(sessions[0], options)
    tasks = [_runner(session, feeds, name) for session, name in zip(sessions, names)]
    seconds = time_interleaved(
        tasks, runs=options.runs, warmup=options.warmup, progress=options.progress, label=" vs ".join(names), rotate=True
    )
    timings = [
        ModelTiming(name, Latency.of(series), batch / statistics.median(series), series)
        for name, series in zip(names, seconds)
    ]
    ratio = pairwise_ratio(seconds[0], seconds[1]) if len(seconds) == 2 else None
    return BenchReport(timings, options.provider, batch, options.runs, options.warmup, options.threads, ratio)


def se_cost(model: str | os.PathLike, options: BenchOptions = BenchOptions()) -> BenchReport:
    """Time `model` against a copy with its SE blocks stripped (built in memory), interleaved, and
    break the difference down by role and op type with ONNX Runtime's profiler.

    The report's models are [stripped, SE model], so its ratio is what the SE blocks cost.
    """
    options.validate()
    with_se = load_model(model)
    if uses_external_data(with_se):
        # Serialized bytes cannot point at external data, so both copies carry their weights inline.
        with_se = ir.external_data.load_to_model(with_se)
    try:
        stripped, strip_report = strip_se(with_se)
    except SeOnnxError:
        raise SeOnnxError(f"{model}: --se-cost needs a model with SE blocks, and it has none") from None
    label = _label(model)
    se_nodes = frozenset(name for block in strip_report.blocks for name in block["nodes"])
    return _cost_report(
        [_serialize(stripped), _serialize(with_se)], [f"{label} without SE", label], options, se_nodes, len(strip_report.blocks)
    )


def _cost_report(sources: Sequence[bytes], names: Sequence[str], options: BenchOptions, se_nodes: frozenset[str], blocks: int) -> BenchReport:
    """Time sources[1] against sources[0], then profile both as many runs again, interleaved the
    same way, so that each op's difference is taken run by run like the measured one. The profiled
    sessions are separate from the timed ones because the profiler slows every node."""
    report = benchmark(sources, options, names=names)
    samples_stripped, samples_se = (timing.seconds for timing in report.models)
    stripped_runs, se_runs = _profile_interleaved(sources, options, _role_classifier(se_nodes))
    report.se_cost = SeCost(
        blocks=blocks,
        ratio=report.ratio,
        ms_per_batch=Difference.of([(b - a) * 1e3 for a, b in zip(samples_stripped, samples_se)]),
        profiled_runs=len(se_runs),
        profiled_ms_per_batch=Difference.of([sum(b.values()) - sum(a.values()) for a, b in zip(stripped_runs, se_runs)]),
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
            OpTime(role, op_type, statistics.median(cand), statistics.median(base), Difference.of([c - b for b, c in zip(base, cand)]))
        )
    return sorted(ops, key=lambda op: (-op.diff_ms, op.role, op.op_type))


def plot_report(report: BenchReport, path: str | os.PathLike) -> None:
    """A PNG a person can read at a glance: latency distributions side by side, the run-by-run
    ratio for two models, and for --se-cost the per-op-type cost of the SE blocks."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = 1 + (report.ratio is not None) + (report.se_cost is not None)
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    names = [Path(model.name).name for model in report.models]

    latency = axes.pop(0)
    series = [np.asarray(model.seconds) * 1e3 for model in report.models]
    latency.boxplot(series, whis=(5, 95), showfliers=False)
    latency.set_xticks(range(1, len(names) + 1), [_shorten(name, 36) for name in names])
    latency.set_ylabel("latency per batch (ms)")
    latency.set_title("latency per run (box p25–p75, whiskers p5–p95)")
    for index, model in enumerate(report.models, start=1):
        latency.annotate(f"median {model.latency_ms.median:.3g} ms", (index, model.latency_ms.median), xytext=(12, 0), textcoords="offset points", va="center", fontsize=8)

    if report.ratio is not None:
        ratio_axis = axes.pop(0)
        ratios = series[1] / series[0]
        ratio_axis.plot(np.arange(1, len(ratios) + 1), ratios, ".", alpha=0.6, label="run by run")
        ratio_axis.axhline(report.ratio.median, color="C3", label=f"median {report.ratio.median:.3f}")
        ratio_axis.axhspan(report.ratio.p10, report.ratio.p90, color="C3", alpha=0.15, label="p10–p90")
        ratio_axis.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        # Outliers of a noisy machine would squash the band; they stay counted in the figures.
        low, high = np.percentile(ratios, [2, 98])
        margin = 0.1 * max(high - low, 0.02)
        ratio_axis.set_ylim(min(low, 1.0) - margin, max(high, 1.0) + margin)
        ratio_axis.set_xlabel("run")
        ratio_axis.set_ylabel("B / A")
        ratio_axis.set_title(f"latency ratio B/A\nA = {_shorten(names[0], 40)}, B = {_shorten(names[1], 40)}", fontsize=9)
        ratio_axis.legend(fontsize=8)

    if report.se_cost is not None:
        ops_axis = axes.pop(0)
        ops = [op for op in report.se_cost.ops if abs(op.diff_ms) > 0][:12][::-1]
        medians = np.array([op.diff_ms for op in ops])
        interval = np.array([[op.diff_ms - op.diff.ci_low for op in ops], [op.diff.ci_high - op.diff_ms for op in ops]])
        ops_axis.barh(
            [f"{op.role}: {op.op_type}" if op.op_type else op.role for op in ops],
            medians,
            xerr=interval.reshape(2, -1),
            color=["C3" if op.diff_ms > 0 else "C2" for op in ops],
            capsize=2,
        )
        ops_axis.axvline(0, color="grey", linewidth=1)
        ops_axis.set_xlabel("ms per batch, SE model − stripped (profiler; bars: 95 % interval)")
        cost = report.se_cost
        ops_axis.set_title(
            f"cost of {cost.blocks} SE blocks by role and op type\nsum {cost.accounted_ms:+.3g} ms, measured {cost.ms_per_batch.median:+.3g} ms",
            fontsize=9,
        )

    figure.suptitle(
        f"{' vs '.join(names)} — {report.provider}, batch {report.batch}, {report.runs} runs", fontsize=10
    )
    figure.tight_layout()
    with atomic_output(path) as staging:
        figure.savefig(staging, format="png", dpi=110)
    plt.close(figure)


def _label(model: str | os.PathLike | bytes) -> str:
    return "model" if isinstance(model, bytes) else os.fspath(model)


def _shorten(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _session(
    model: str | os.PathLike | bytes, name: str, options: BenchOptions, *, profile: bool = False, spinning: bool = True
):
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise SeOnnxError(f"{name}: no such file")
    return make_session(
        model, options.provider, intra_op_threads=options.threads, enable_profiling=profile, spinning=spinning
    )


def _serialize(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def _inputs(session, options: BenchOptions) -> tuple[dict[str, np.ndarray], int]:
    """The seeded feeds and the batch they carry: the first input's first dimension."""
    first = session.get_inputs()[0] if session.get_inputs() else None
    fixed = first.shape[0] if first is not None and first.shape and isinstance(first.shape[0], int) else None
    if fixed is not None and options.batch is not None and options.batch != fixed:
        raise SeOnnxError(f"the model's input {first.name!r} has a fixed batch of {fixed}; --batch {options.batch} does not apply")
    feeds = random_inputs(session, batch=options.batch or 1, seed=options.seed)
    batch = feeds[first.name].shape[0] if first is not None and feeds[first.name].ndim else 1
    return feeds, int(batch)


def _check_same_inputs(session_a, session_b, names: Sequence[str]) -> None:
    """Same input names, types and shapes; symbolic dims match each other whatever their names."""
    inputs_a, inputs_b = (sorted((m.name, m.type, m.shape) for m in s.get_inputs()) for s in (session_a, session_b))

    def comparable(inputs):
        return [(name, dtype, [d if isinstance(d, int) else None for d in shape]) for name, dtype, shape in inputs]

    if comparable(inputs_a) != comparable(inputs_b):
        raise SeOnnxError(f"{names[0]} and {names[1]} take different inputs: {_describe(inputs_a)} vs {_describe(inputs_b)}")


def _describe(inputs: Sequence[tuple[str, str, list]]) -> str:
    return ", ".join(f"{name} {dtype} {shape}" for name, dtype, shape in inputs) or "none"


def _runner(session, feeds: dict[str, np.ndarray], name: str) -> Callable[[], object]:
    def run() -> object:
        try:
            return session.run(None, feeds)
        except Exception as error:  # ORT raises its own exception types for bad feeds
            raise SeOnnxError(f"{name}: ONNX Runtime could not run it: {' '.join(str(error).split())}") from None

    return run


def _role_classifier(se_nodes: frozenset[str]) -> Callable[[str, str], str]:
    """The role of a kernel from its node's name and op type in ONNX Runtime's optimized graph,
    where a node fused with its activation is named "fused <first node>"."""

    def role(node: str, op_type: str) -> str:
        if node in se_nodes or node.removeprefix("fused ") in se_nodes:
            return SE_ROLE
        return LAYOUT_ROLE if op_type in _LAYOUT_OPS else MODEL_ROLE

    return role


def _profile_interleaved(
    models: Sequence[bytes], options: BenchOptions, role_of: Callable[[str, str], str]
) -> list[list[dict[tuple[str, str], float]]]:
    """Each model's time per (role, op type), run by run, from profiled sessions run interleaved
    like the timed ones (same warm-up, runs and rotation); the traces are deleted."""
    sessions = [_session(model, "model", options, profile=True, spinning=False) for model in models]
    feeds, _ = _inputs(sessions[0], options)
    try:
        time_interleaved([_runner(session, feeds, "model") for session in sessions], runs=options.runs, warmup=options.warmup, rotate=True)
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


def _progress_bar(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="run", file=sys.stderr, leave=False)
