"""--trace: a real server exports OpenTelemetry spans to an OTLP/HTTP receiver on loopback. Checked: the
request span and its decode/queue/compute/encode children, their attributes, a caller's traceparent
continued over HTTP and gRPC, outcomes, spans flushed on SIGTERM; without --trace, no SDK loaded."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from service_helpers import ROOT, free_port, infer_json, relu_neg_model, start_server, stop_server, write_repo
from tritonclient.utils import InferenceServerException

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
HTTP_PARENT = "b7ad6b7169203331"
GRPC_PARENT = "00f067aa0ba902b7"
HTTP_ROUTE = "POST /v2/models/{model_name}/infer"
GRPC_RPC = "inference.GRPCInferenceService/ModelInfer"


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies; `spans` holds what arrived."""

    def __init__(self):
        self.spans: list[tuple[dict, Span]] = []  # (resource attributes, span)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    with receiver._lock:
                        for resource_spans in request.resource_spans:
                            resource = _attributes(resource_spans.resource.attributes)
                            for scope_spans in resource_spans.scope_spans:
                                receiver.spans.extend((resource, span) for span in scope_spans.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 30.0) -> list[Span]:
        """The spans received, once `predicate(spans)` holds; fails at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = [span for _, span in self.spans]
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never arrived; got {[span.name for span in spans]}")
            time.sleep(0.02)


def _attributes(pairs) -> dict:
    return {pair.key: getattr(pair.value, pair.value.WhichOneof("value")) for pair in pairs}


def _children(spans: list[Span], parent: Span) -> dict[str, Span]:
    return {span.name: span for span in spans if span.parent_span_id == parent.span_id}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A traced server (HTTP and gRPC) whose batch processor holds spans for a minute: every span the
    tests see arrives at SIGTERM's flush. The tests run their requests, then `finish` stops it."""
    repo = write_repo(
        tmp_path_factory.mktemp("repo"),
        {
            "relu": relu_neg_model(),
            "batched": (relu_neg_model(), {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_us": 0}}, [1]),
        },
    )
    receiver = Receiver()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "tracing-test",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",
    }
    grpc_port = free_port()
    process, http_url = start_server(repo, "--trace", env=env, grpc_port=grpc_port)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with httpx.Client(base_url=f"http://{http_url}") as client:
        traceparent = f"00-{TRACE_ID}-{HTTP_PARENT}-01"
        response = client.post("/v2/models/relu/infer", json=infer_json("x", x), headers={"traceparent": traceparent})
        assert response.status_code == 200
        assert client.post("/v2/models/batched/versions/1/infer", json=infer_json("x", x)).status_code == 200
        assert client.post("/v2/models/missing/infer", json=infer_json("x", x)).status_code == 404
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/relu").status_code == 200
    grpc_client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    given = triton.InferInput("x", [2, 4], "FP32")
    given.set_data_from_numpy(x)
    grpc_client.infer("relu", [given], headers={"traceparent": f"00-{TRACE_ID}-{GRPC_PARENT}-01"})
    wrong = triton.InferInput("x", [2, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 3), np.float32))
    with pytest.raises(InferenceServerException):
        grpc_client.infer("relu", [wrong])
    grpc_client.close()
    assert receiver.spans == []  # held by the batch processor until the server stops
    assert stop_server(process) == 0
    servers = {HTTP_ROUTE: 2, "POST /v2/models/{model_name}/versions/{version}/infer": 1, GRPC_RPC: 2}
    spans = receiver.wait_for(lambda spans: all(sum(s.name == n for s in spans) == k for n, k in servers.items()))
    return receiver, spans


def _server_span(spans: list[Span], name: str, **attributes) -> Span:
    found = [s for s in spans if s.name == name and attributes.items() <= _attributes(s.attributes).items()]
    assert len(found) == 1, [(s.name, _attributes(s.attributes)) for s in spans]
    return found[0]


def test_http_request_continues_the_callers_trace(traced):
    receiver, spans = traced
    span = _server_span(spans, HTTP_ROUTE, **{"http.response.status_code": 200})
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == HTTP_PARENT
    attributes = _attributes(span.attributes)
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v2/models/{model_name}/infer"
    assert attributes["url.path"] == "/v2/models/relu/infer"
    assert attributes["se_onnx.model.name"] == "relu" and attributes["se_onnx.model.version"] == "1"
    assert span.status.code == Status.STATUS_CODE_UNSET
    children = _children(spans, span)
    assert sorted(children) == ["compute", "decode", "encode", "queue"]
    # The phases follow one another inside the request's span.
    order = [children[name] for name in ("decode", "queue", "compute", "encode")]
    assert all(a.end_time_unix_nano <= b.start_time_unix_nano + 1_000_000 for a, b in zip(order, order[1:]))
    assert span.start_time_unix_nano <= order[0].start_time_unix_nano
    assert order[-1].end_time_unix_nano <= span.end_time_unix_nano
    assert all(child.trace_id.hex() == TRACE_ID for child in order)
    resource = receiver.spans[0][0]
    assert resource["service.name"] == "tracing-test" and "service.version" in resource


def test_batched_request_carries_its_batch_size(traced):
    _, spans = traced
    span = _server_span(spans, "POST /v2/models/{model_name}/versions/{version}/infer")
    assert _attributes(span.attributes)["se_onnx.batch_size"] == 2
    assert span.parent_span_id == b""  # no traceparent: a trace of its own
    compute = _children(spans, span)["compute"]
    assert _attributes(compute.attributes)["se_onnx.batch_size"] == 2


def test_refused_request_has_its_status_and_message(traced):
    _, spans = traced
    span = _server_span(spans, HTTP_ROUTE, **{"http.response.status_code": 404})
    attributes = _attributes(span.attributes)
    assert attributes["error.type"] == "404" and "missing" in attributes["error.message"]
    assert span.status.code == Status.STATUS_CODE_UNSET  # a client's mistake is not the server's failure
    assert _children(spans, span) == {}


def test_grpc_request_continues_the_callers_trace(traced):
    _, spans = traced
    span = _server_span(spans, GRPC_RPC, **{"rpc.grpc.status_code": 0})
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == GRPC_PARENT
    attributes = _attributes(span.attributes)
    assert attributes["rpc.system"] == "grpc" and attributes["rpc.method"] == "ModelInfer"
    assert attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert sorted(_children(spans, span)) == ["compute", "decode", "encode", "queue"]
    failed = _server_span(spans, GRPC_RPC, **{"rpc.grpc.status_code": 3})
    assert _attributes(failed.attributes)["error.type"] == "INVALID_ARGUMENT"
    assert "decode" in _children(spans, failed)


def test_health_and_metadata_are_not_traced(traced):
    _, spans = traced
    assert {s.name for s in spans if s.kind == Span.SPAN_KIND_SERVER} == {
        HTTP_ROUTE,
        "POST /v2/models/{model_name}/versions/{version}/infer",
        GRPC_RPC,
    }


def test_without_trace_the_sdk_is_never_imported(tmp_path):
    # FastAPI itself imports OpenTelemetry's API (it has telemetry of its own, off without a
    # configured provider); the SDK and the exporters are the server's to load, under --trace only.
    repo = write_repo(tmp_path / "repo", {"relu": relu_neg_model()})
    script = f"""
import sys
import numpy as np
from service_helpers import infer_json, serve
with serve({str(repo)!r}) as client:
    assert client.post("/v2/models/relu/infer", json=infer_json("x", np.ones((1, 4), np.float32))).status_code == 200
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT / "tests",
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_trace_without_the_extra_is_a_one_line_error(tmp_path):
    # The SDK made unimportable, as where the `trace` extra is not installed.
    script = """
import sys
sys.modules["opentelemetry.sdk"] = None
from se_onnx.cli import main
sys.exit(main(["serve", "--trace", "--provider", "cpu", "--grpc-port", "0", "--port", sys.argv[1]]))
"""
    write_repo(tmp_path / "models", {"relu": relu_neg_model()})
    done = subprocess.run(
        [sys.executable, "-c", script, str(free_port())],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'se-onnx[trace]'" in lines[0], done.stderr
