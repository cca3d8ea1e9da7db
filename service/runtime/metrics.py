"""Prometheus metrics of one server, on its own registry so that several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

_LABELS = ("model", "version")
# Latencies from 100 µs (a tiny model on the CPU) to 30 s (a request stuck behind a large batch).
_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
        ProcessCollector(registry=self.registry)
        self.success = Counter(
            "se_onnx_inference_request_success", "Inference requests that succeeded", _LABELS, registry=self.registry
        )
        self.failure = Counter(
            "se_onnx_inference_request_failure", "Inference requests that failed", _LABELS, registry=self.registry
        )
        self.client_gone = Counter(
            "se_onnx_inference_client_gone",
            "Inference requests dropped because their client disconnected (not computed if still queued)",
            _LABELS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "se_onnx_inference_request_duration_seconds",
            "Time from receiving a request to having its response, decoding and encoding included",
            _LABELS,
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "se_onnx_inference_queue_duration_seconds",
            "Time a request waited for a batch or a free instance",
            _LABELS,
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.compute_duration = Histogram(
            "se_onnx_inference_compute_duration_seconds",
            "Time ONNX Runtime spent on each run (one run per batch)",
            _LABELS,
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "se_onnx_inference_batch_size",
            "Rows per ONNX Runtime run",
            _LABELS,
            buckets=_BATCH,
            registry=self.registry,
        )


# Triton's series, computed at each scrape from the same per-model statistics that the statistics
# extension serves, so that dashboards and alerts written for Triton work unchanged. Triton
# exposes them without prometheus_client's `_total` suffix, so they are written as untyped.
_TRITON_SERIES = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s["inference_stats"]["success"]["count"],
    ),
    (
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        lambda s: s["inference_stats"]["fail"]["count"],
    ),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n)", lambda s: s["inference_count"]),
    ("nv_inference_exec_count", "Number of model executions performed", lambda s: s["execution_count"]),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: s["inference_stats"]["success"]["ns"] / 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s["inference_stats"]["queue"]["ns"] / 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s["inference_stats"]["compute_input"]["ns"] / 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s["inference_stats"]["compute_infer"]["ns"] / 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        lambda s: s["inference_stats"]["compute_output"]["ns"] / 1000,
    ),
)


class TritonCollector:
    """Triton's per-model series (labels `model`, `version`) and its `nv_cpu_*` host series.
    `models()` gives the loaded versions as (statistics dict, requests in flight)."""

    def __init__(self, models: Callable[[], list[tuple[dict, int]]]):
        self._models = models
        self._cpu = _CpuUtilization()

    def collect(self) -> Iterator[Metric]:
        models = self._models()
        for name, documentation, value in _TRITON_SERIES:
            metric = Metric(name, documentation, "unknown")
            for stats, _ in models:
                metric.add_sample(name, {"model": stats["name"], "version": stats["version"]}, value(stats))
            yield metric
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model",
            labels=_LABELS,
        )
        for stats, inflight in models:
            pending.add_metric([stats["name"], stats["version"]], inflight)
        yield pending
        memory = _memory()
        if memory is not None:
            yield GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=memory[0])
            yield GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=memory[1])
        utilization = self._cpu.since_last()
        if utilization is not None:
            yield GaugeMetricFamily(
                "nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0] since the last scrape", value=utilization
            )


def _memory() -> tuple[int, int] | None:
    """Total and used RAM of the host (total less available), from /proc/meminfo where there is one."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo}
    except (OSError, ValueError, IndexError):
        return None
    return fields["MemTotal"], fields["MemTotal"] - fields.get("MemAvailable", fields.get("MemFree", 0))


class _CpuUtilization:
    """Busy share of all CPUs between two readings of /proc/stat, as Triton computes nv_cpu_utilization."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as stat:
                ticks = [int(value) for value in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return sum(ticks), idle

    def since_last(self) -> float | None:
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return 1.0 - (now[1] - last[1]) / (now[0] - last[0])
