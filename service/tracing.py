"""OpenTelemetry tracing of inference requests (`--trace`), and its no-op stand-in when tracing is off.

The front ends open one server span per inference request, continuing the caller's trace from
its `traceparent` (HTTP header or gRPC metadata); the data plane adds decode, queue, compute and
encode spans under it. Everything else comes from OpenTelemetry's own environment variables
(OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_*, OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME, …), read by
its SDK. The SDK is imported only by `Tracing.start`, so a server without --trace never loads it.

Queue and compute happen off the event loop (in the batcher and the model's threads): there,
only `Phases` is filled in, with timestamps, and its spans are made afterwards on the loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from se_onnx.errors import SeOnnxError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

INSTALL_HINT = "pip install 'se-onnx[trace]'"
# Attributes of the server's own, where OpenTelemetry's semantic conventions have none.
MODEL_NAME = "se_onnx.model.name"
MODEL_VERSION = "se_onnx.model.version"
BATCH_SIZE = "se_onnx.batch_size"


@dataclass
class Phases:
    """When one request waited and ran (time.time_ns()), as the runtime saw it; 0: not reached."""

    queued: int
    started: int = 0
    ended: int = 0
    rows: int = 0  # rows computed together: the request's own, or its dynamic batch's


class RequestSpan:
    """A front end's span of one request: `outcome` says how it ended."""

    def __init__(self, span: Span):
        self._span = span
        self.finished = False

    def outcome(
        self, attribute: str, code: int, error: str | None = None, message: str | None = None, fault: bool = False
    ) -> None:
        """The protocol's status `code` under `attribute`; `error` (error.type) and `message` for a refusal
        or failure, which marks the span as failed when it is the server's `fault` (5xx, INTERNAL …)."""
        from opentelemetry.trace import StatusCode

        self.finished = True
        self._span.set_attribute(attribute, code)
        if error is not None:
            self._span.set_attribute("error.type", error)
        if message is not None:
            self._span.set_attribute("error.message", message)
        if fault:
            self._span.set_status(StatusCode.ERROR, message)


class Tracing:
    """Spans of inference requests on the SDK's tracer provider; `shutdown` flushes what is left."""

    enabled = True

    def __init__(self, provider: TracerProvider):
        from opentelemetry import propagate, trace

        self.provider = provider
        self._tracer: Tracer = provider.get_tracer("se-onnx")
        self._trace = trace
        self._propagate = propagate

    @classmethod
    def start(cls, service_version: str) -> Tracing:
        """The tracer provider as OpenTelemetry's environment variables configure it (exporter, OTLP
        endpoint and protocol, sampler, service name, batch processor). SeOnnxError without the SDK."""
        try:
            from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
            from opentelemetry.sdk._configuration import (
                _get_exporter_entry_point,
                _get_exporter_names,
                _import_exporters,
            )
            from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise SeOnnxError(f"--trace needs OpenTelemetry; install it with {INSTALL_HINT}") from None
        import os

        # The SDK's own reading of OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL;
        # unset, the exporter is OTLP, as the specification has it.
        if os.environ.get(OTEL_TRACES_EXPORTER):
            names = _get_exporter_names("traces")
        else:
            names = [_get_exporter_entry_point("otlp", "traces")]
        try:
            exporters, _, _ = _import_exporters(names, [], [])
        except (RuntimeError, StopIteration) as error:
            raise SeOnnxError(f"OTEL_TRACES_EXPORTER: cannot use {', '.join(names)}: {error}") from None
        resource = Resource.create({SERVICE_VERSION: service_version})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "se-onnx"}))
        # The sampler comes from OTEL_TRACES_SAMPLER(_ARG) when none is given.
        provider = TracerProvider(resource=resource)
        for exporter in exporters.values():
            provider.add_span_processor(BatchSpanProcessor(exporter()))
        return cls(provider)

    def shutdown(self) -> None:
        """Export the spans still held and stop the exporters' threads."""
        self.provider.shutdown()

    @contextlib.contextmanager
    def server(self, name: str, carrier: Mapping[str, Any], attributes: dict[str, Any]) -> Iterator[RequestSpan]:
        """The server span of one request, current inside the block, continuing the trace that
        `carrier` (headers or metadata, names in lower case) carries. An exception that leaves the
        block without an `outcome` fails the span with its type."""
        parent = self._propagate.extract(carrier)
        kind = self._trace.SpanKind.SERVER
        with self._tracer.start_as_current_span(
            name, parent, kind, attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            request = RequestSpan(span)
            try:
                yield request
            except BaseException as error:
                if not request.finished:
                    span.set_attribute("error.type", type(error).__qualname__)
                    span.set_status(self._trace.StatusCode.ERROR, str(error))
                raise

    def span(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """An internal span, a child of the current one."""
        return self._tracer.start_as_current_span(name)

    def model(self, name: str, version: str) -> None:
        """The model that answers the current request."""
        self._trace.get_current_span().set_attributes({MODEL_NAME: name, MODEL_VERSION: version})

    def rows(self, rows: int | None) -> None:
        """The rows the current request sent to a batching model (None: not one)."""
        if rows is not None:
            self._trace.get_current_span().set_attribute(BATCH_SIZE, rows)

    def phases(self) -> Phases:
        return Phases(time.time_ns())

    def record(self, phases: Phases | None) -> None:
        """The queue and compute spans of `phases`, under the current span; a phase still under
        way (a request that timed out or was cancelled) ends now."""
        if phases is None:
            return
        now = time.time_ns()
        queue = self._tracer.start_span("queue", start_time=phases.queued)
        queue.end(end_time=phases.started or now)
        if phases.started:
            compute = self._tracer.start_span(
                "compute", start_time=phases.started, attributes={BATCH_SIZE: phases.rows}
            )
            compute.end(end_time=phases.ended or now)


class _Unrecorded:
    """A request span that records nothing."""

    def outcome(self, *args: Any, **kwargs: Any) -> None:
        pass


class NoTracing:
    """Tracing off: every call does nothing, and nothing of OpenTelemetry is imported."""

    enabled = False
    _NOTHING = contextlib.nullcontext()
    _REQUEST = contextlib.nullcontext(_Unrecorded())

    def shutdown(self) -> None:
        pass

    def server(self, name: str, carrier: Mapping[str, Any], attributes: dict[str, Any]) -> Any:
        return self._REQUEST

    def span(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return self._NOTHING

    def model(self, name: str, version: str) -> None:
        pass

    def rows(self, rows: int | None) -> None:
        pass

    def phases(self) -> None:
        return None

    def record(self, phases: Phases | None) -> None:
        pass
