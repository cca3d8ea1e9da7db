"""The one place where request and execution timings are recorded, for Prometheus and Triton's statistics alike."""

from __future__ import annotations

from service.runtime.metrics import Metrics
from service.runtime.stats import ModelStats


class ModelRecorder:
    """What one model version records: each request's outcome and duration, each request's queue
    wait, each ONNX Runtime execution. Feeds the version's Prometheus series and its statistics
    (GET …/stats, gRPC ModelStatistics) from the same calls, so the two never disagree."""

    def __init__(self, metrics: Metrics, name: str, version: str):
        labels = {"model": name, "version": version}
        self.stats = ModelStats()
        self._success = metrics.success.labels(**labels)
        self._failure = metrics.failure.labels(**labels)
        self._request_duration = metrics.request_duration.labels(**labels)
        self._queue = metrics.queue_duration.labels(**labels)
        self._compute = metrics.compute_duration.labels(**labels)
        self._batch = metrics.batch_size.labels(**labels)
        self._gone = metrics.client_gone.labels(**labels)

    def request(self, ok: bool, seconds: float) -> None:
        """A request finished (decoding and encoding included), successfully or not."""
        if ok:
            self._success.inc()
            self._request_duration.observe(seconds)
        else:
            self._failure.inc()
        self.stats.request(ok, seconds)

    def client_gone(self) -> None:
        """A request's client disconnected before its response; the request was dropped."""
        self._gone.inc()

    def queued(self, seconds: float) -> None:
        """A request waited this long for a batch or a free instance."""
        self._queue.observe(seconds)
        self.stats.queued(seconds)

    def executed(self, rows: int, infer_seconds: float) -> None:
        """One ONNX Runtime run of `rows` rows (one request's, or a batch's)."""
        self._compute.observe(infer_seconds)
        self._batch.observe(rows)
        self.stats.computed(rows, infer_seconds)


class Recorder:
    """The server's metrics registry and a recorder per model version."""

    def __init__(self) -> None:
        self.metrics = Metrics()

    @property
    def registry(self):
        return self.metrics.registry

    def for_model(self, name: str, version: str) -> ModelRecorder:
        return ModelRecorder(self.metrics, name, version)
