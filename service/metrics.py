"""Prometheus metrics of one server, on its own registry so that several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LABELS = ("model", "version")
# Latencies from 100 µs (a tiny model on the CPU) to 30 s (a request stuck behind a large batch).
_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.success = Counter(
            "se_onnx_inference_request_success", "Inference requests that succeeded", _LABELS, registry=self.registry
        )
        self.failure = Counter(
            "se_onnx_inference_request_failure", "Inference requests that failed", _LABELS, registry=self.registry
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
