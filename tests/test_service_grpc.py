"""The gRPC front end of a real server process on loopback, driven by the unmodified tritonclient.grpc:
every RPC, streaming, status codes, the repository key, health, reflection, SIGTERM with a stream open."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from service_helpers import (
    ROOT,
    free_port,
    identity_model,
    relu_neg_model,
    server_log,
    slow_model,
    start_server,
    stop_server,
    write_repo,
)
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

KEY = "k3y"
SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: HTTP and gRPC (its port from SE_ONNX_GRPC_PORT), a key, a 1 MB limit."""
    repo = write_repo(
        tmp_path_factory.mktemp("repo"),
        {
            "relu": relu_neg_model(),
            "types": identity_model(["FP16", "INT64", "BOOL", "BYTES", "UINT8"]),
            "typed": identity_model(["INT64", "BOOL", "BYTES", "UINT8", "FP64"]),
        },
    )
    grpc_port = free_port()
    env = {"SE_ONNX_API_KEY": KEY, "SE_ONNX_MAX_REQUEST_SIZE": "1000000", "SE_ONNX_GRPC_PORT": str(grpc_port)}
    process, http_url = start_server(repo, env=env, grpc_port=None)
    yield f"127.0.0.1:{grpc_port}", http_url, repo
    assert stop_server(process) == 0


def _input(name: str, array: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _status(call) -> str:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value.status()


def test_health_and_metadata(server):
    url, _, _ = server
    client = triton.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("relu") and client.is_model_ready("relu", "1")
    assert not client.is_model_ready("missing") and not client.is_model_ready("relu", "7")
    metadata = client.get_server_metadata()
    assert metadata.name == "se-onnx" and "model_repository" in metadata.extensions
    model = client.get_model_metadata("relu", as_json=True)
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = client.get_model_config("relu", as_json=True)["config"]
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", "4"]}]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert _status(lambda: client.get_model_metadata("missing")) == "StatusCode.NOT_FOUND"
    assert _status(lambda: client.get_model_config("relu", "x")) == "StatusCode.NOT_FOUND"


def test_infer_raw_contents(server):
    url, _, _ = server
    client = triton.InferenceServerClient(url)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    result = client.infer("relu", [_input("x", x)], request_id="abc")
    assert result.get_response().id == "abc" and result.get_response().model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("relu"), np.maximum(x, 0))
    np.testing.assert_array_equal(result.as_numpy("neg"), -x)
    only = client.infer("relu", [_input("x", x)], outputs=[triton.InferRequestedOutput("neg")])
    assert [output.name for output in only.get_response().outputs] == ["neg"]
    arrays = {
        "FP16": np.array([[0.5, -1.5, 2.0]], np.float16),
        "INT64": np.array([[-(2**40), 0, 7]], np.int64),
        "BOOL": np.array([[True, False, True]]),
        "BYTES": np.array([[b"a", "ünï".encode(), b""]], dtype=object),
        "UINT8": np.array([[0, 255, 7]], np.uint8),
    }
    result = client.infer("types", [_input(f"in_{t}", a, t) for t, a in arrays.items()])
    for datatype, array in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(f"out_{datatype}"), array)


def test_infer_typed_contents(server):
    """KServe's clients may send typed `contents` instead of raw bytes; replies are raw either way."""
    url, _, _ = server
    values = {
        "INT64": [1, -2, 3],
        "BOOL": [True, False, True],
        "BYTES": [b"x", b"", b"yz"],
        "UINT8": [1, 2, 255],
        "FP64": [0.5, -1, 2],
    }
    fields = {
        "INT64": "int64_contents",
        "BOOL": "bool_contents",
        "BYTES": "bytes_contents",
        "UINT8": "uint_contents",
        "FP64": "fp64_contents",
    }

    def tensor(datatype: str, **contents) -> pb.ModelInferRequest.InferInputTensor:
        return pb.ModelInferRequest.InferInputTensor(
            name=f"in_{datatype}", datatype=datatype, shape=[1, 3], contents=pb.InferTensorContents(**contents)
        )

    request = pb.ModelInferRequest(model_name="typed", inputs=[tensor(t, **{fields[t]: v}) for t, v in values.items()])
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def refused(message: pb.ModelInferRequest) -> str:
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(message)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return error.value.details()

        reply = stub.ModelInfer(request)
        outputs = dict(zip((output.name for output in reply.outputs), reply.raw_output_contents))
        assert deserialize_bytes_tensor(outputs["out_BYTES"]).tolist() == values["BYTES"]
        for datatype, dtype in (("INT64", np.int64), ("BOOL", np.bool_), ("UINT8", np.uint8), ("FP64", np.float64)):
            assert np.frombuffer(outputs[f"out_{datatype}"], dtype).tolist() == values[datatype]

        out_of_range = pb.ModelInferRequest()
        out_of_range.CopyFrom(request)
        out_of_range.inputs[3].contents.uint_contents[2] = 256
        assert "not UINT8" in refused(out_of_range)
        missing = pb.ModelInferRequest(model_name="typed", inputs=request.inputs[:-1])
        assert "missing input 'in_FP64'" in refused(missing)
        mixed = pb.ModelInferRequest(model_name="typed", inputs=request.inputs, raw_input_contents=[b"\0" * 24])
        assert "one per input" in refused(mixed)
        short = pb.ModelInferRequest(model_name="typed", inputs=[tensor("INT64", int64_contents=[1, 2])])
        assert "2 elements, expected 3" in refused(short)
        empty = pb.ModelInferRequest(
            model_name="typed",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="in_INT64", datatype="INT64", shape=[1, 3])],
        )
        assert "neither contents nor raw_input_contents" in refused(empty)
        fp16 = pb.ModelInferRequest(model_name="types", inputs=[tensor("FP16", fp32_contents=[1, 2, 3])])
        assert "raw_input_contents only" in refused(fp16)


def test_status_codes(server):
    url, _, _ = server
    client = triton.InferenceServerClient(url)
    ones = np.ones((1, 5), np.float32)
    assert _status(lambda: client.infer("relu", [_input("x", ones)])) == "StatusCode.INVALID_ARGUMENT"
    assert _status(lambda: client.infer("relu", [_input("y", ones[:, :4])])) == "StatusCode.INVALID_ARGUMENT"
    assert (
        _status(lambda: client.infer("relu", [_input("x", ones[:, :4].astype(np.float64), "FP64")]))
        == "StatusCode.INVALID_ARGUMENT"
    )
    outputs = [triton.InferRequestedOutput("nope")]
    assert (
        _status(lambda: client.infer("relu", [_input("x", ones[:, :4])], outputs=outputs))
        == "StatusCode.INVALID_ARGUMENT"
    )
    assert _status(lambda: client.infer("missing", [_input("x", ones)])) == "StatusCode.NOT_FOUND"
    assert (
        _status(lambda: client.infer("relu", [_input("x", ones[:, :4])], model_version="9")) == "StatusCode.NOT_FOUND"
    )
    big = np.ones((65536, 4), np.float32)  # 1 MiB, past the 1,000,000-byte limit
    assert _status(lambda: client.infer("relu", [_input("x", big)])) == "StatusCode.RESOURCE_EXHAUSTED"
    for call in (
        client.get_cuda_shared_memory_status,
        lambda: client.get_trace_settings(),
        lambda: client.update_log_settings({"log_info": True}),
    ):
        with pytest.raises(InferenceServerException) as error:
            call()
        assert error.value.status() == "StatusCode.UNIMPLEMENTED" and "not" in error.value.message()
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(
            model_name="relu", inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])]
        )
        request.raw_input_contents.append(b"\0" * 15)  # not 16 bytes
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "15 bytes" in error.value.details()
    assert client.is_server_ready()


def test_stream_interleaves_shapes_and_reports_errors_per_request(server):
    url, _, _ = server
    client = triton.InferenceServerClient(url)
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    sent = {}
    try:
        for index, rows in enumerate([1, 3, 0, 2, 5, 1]):
            if rows == 0:  # one bad request mid-stream
                client.async_stream_infer("relu", [_input("x", np.ones((1, 5), np.float32))], request_id="bad")
                continue
            x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) - index
            sent[str(index)] = x
            client.async_stream_infer("relu", [_input("x", x)], request_id=str(index))
        got, errors = {}, []
        for _ in range(len(sent) + 1):
            result, error = replies.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result
    finally:
        client.stop_stream()
    assert len(errors) == 1 and "shape [1, 5] does not match [-1, 4]" in errors[0].message()
    assert set(got) == set(sent)
    for request_id, x in sent.items():
        np.testing.assert_array_equal(got[request_id].as_numpy("neg"), -x)


def test_repository_needs_the_key(server):
    url, _, repo = server
    client = triton.InferenceServerClient(url)
    assert _status(client.get_model_repository_index) == "StatusCode.UNAUTHENTICATED"
    assert _status(lambda: client.load_model("relu", headers={"x-api-key": "wrong"})) == "StatusCode.UNAUTHENTICATED"
    assert _status(lambda: client.unload_model("relu")) == "StatusCode.UNAUTHENTICATED"
    index = client.get_model_repository_index(headers={"x-api-key": KEY}, as_json=True)["models"]
    assert {(row["name"], row["state"]) for row in index} >= {("relu", "READY"), ("types", "READY")}
    bearer = {"authorization": f"Bearer {KEY}"}
    write_repo(repo, {"extra": relu_neg_model()})
    client.load_model("extra", headers=bearer)
    assert client.is_model_ready("extra")
    client.unload_model("extra", headers=bearer)
    assert not client.is_model_ready("extra")
    assert (
        _status(lambda: client.infer("extra", [_input("x", np.ones((1, 4), np.float32))])) == "StatusCode.UNAVAILABLE"
    )
    client.load_model("extra", config='{"max_batch_size": 8, "dynamic_batching": {}}', headers=bearer)
    assert client.get_model_config("extra").config.max_batch_size == 8
    assert _status(lambda: client.load_model("nothing", headers=bearer)) == "StatusCode.NOT_FOUND"
    assert _status(lambda: client.load_model("extra", config="{", headers=bearer)) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("extra", files={"file:1/model.onnx": b"onnx"}, headers=bearer)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "not supported" in refused.value.message()


def test_load_and_unload_during_traffic(server):
    """Reloads under gRPC traffic lose no request; after an unload requests get UNAVAILABLE, never INTERNAL."""
    url, _, repo = server
    write_repo(repo, {"busy": relu_neg_model()})
    client = triton.InferenceServerClient(url)
    headers = {"x-api-key": KEY}
    client.load_model("busy", headers=headers)
    outcomes: list[tuple[str, str]] = []  # (phase, "ok" or the status code)
    phase = ["reloading"]
    done = threading.Event()

    def traffic() -> None:
        caller = triton.InferenceServerClient(url)
        x = np.ones((2, 4), np.float32)
        while not done.is_set():
            try:
                np.testing.assert_array_equal(caller.infer("busy", [_input("x", x)]).as_numpy("neg"), -x)
                status = "ok"
            except InferenceServerException as error:
                status = error.status()
            outcomes.append((phase[0], status))  # the phase when it finished: an unload may have begun meanwhile

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()

    def after_more_requests(count: int) -> None:
        """Wait for `count` more answers, not for a fixed time: a loaded machine answers slowly."""
        wanted, deadline = len(outcomes) + count, time.monotonic() + 60
        while len(outcomes) < wanted and time.monotonic() < deadline:
            time.sleep(0.01)

    for _ in range(3):  # each reload with requests before and after it
        after_more_requests(2)
        client.load_model("busy", headers=headers)
    after_more_requests(2)
    phase[0] = "unloading"
    client.unload_model("busy", headers=headers)
    deadline = time.monotonic() + 20  # until the callers have seen the unload
    while ("unloading", "StatusCode.UNAVAILABLE") not in outcomes and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    for thread in threads:
        thread.join(timeout=30)
    reloading = [status for when, status in outcomes if when == "reloading"]
    unloading = [status for when, status in outcomes if when == "unloading"]
    assert len(reloading) >= 8 and set(reloading) == {"ok"}, outcomes
    assert "StatusCode.UNAVAILABLE" in unloading and set(unloading) <= {"ok", "StatusCode.UNAVAILABLE"}, outcomes


def test_one_recorder_for_both_front_ends(server):
    url, http_url, _ = server
    client = triton.InferenceServerClient(url)
    http = triton_http.InferenceServerClient(http_url)
    x = np.ones((2, 4), np.float32)
    before = client.get_inference_statistics("relu", as_json=True)["model_stats"][0]
    client.infer("relu", [_input("x", x)])
    tensor = triton_http.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    http.infer("relu", [tensor])
    after = client.get_inference_statistics("relu", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 4
    assert http.get_inference_statistics("relu")["model_stats"][0]["inference_count"] == int(after["inference_count"])
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {row["name"] for row in every} >= {"relu", "types"}


def test_health_service_and_reflection(server):
    url, _, _ = server
    with grpc.insecure_channel(url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="other"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health"} <= set(database.get_services())
        methods = {
            method.name for method in descriptor_pool.DescriptorPool(database).FindServiceByName(SERVICE).methods
        }
        assert {"ModelInfer", "ModelStreamInfer", "RepositoryModelLoad"} <= methods


def test_sigterm_finishes_open_stream_and_unary_calls_and_exits_0(tmp_path):
    repo = write_repo(tmp_path / "repo", {"slow": slow_model(1024, 16)})
    grpc_port = free_port()
    process, _ = start_server(repo, "--workers-per-model", "1", grpc_port=grpc_port)
    url = f"127.0.0.1:{grpc_port}"
    streamed: queue.Queue = queue.Queue()
    stream_client = triton.InferenceServerClient(url)
    stream_client.start_stream(callback=lambda result, error: streamed.put((result, error)))
    for i in range(2):
        stream_client.async_stream_infer("slow", [_input("x", np.full((1, 1), i, np.float32))], request_id=f"s{i}")
    unary: dict[str, object] = {}

    def call() -> None:
        try:
            unary["y"] = (
                triton.InferenceServerClient(url)
                .infer("slow", [_input("x", np.full((1, 1), 7, np.float32))])
                .as_numpy("y")
            )
        except Exception as error:  # reported by the assertion below
            unary["y"] = error

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)  # all three are in; one runs, two wait for the single instance
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    replies = [streamed.get(timeout=120) for _ in range(2)]
    thread.join(timeout=120)
    assert stop_server(process) == 0
    assert time.monotonic() > signalled
    assert sorted(
        (result.get_response().id, float(result.as_numpy("y")[0, 0])) for result, error in replies if error is None
    ) == [("s0", 0.0), ("s1", 1.0)], replies
    assert isinstance(unary["y"], np.ndarray) and unary["y"][0, 0] == 7, unary
    stream_client.stop_stream()
    assert streamed.empty(), "the stream ended with an error"
    with pytest.raises(InferenceServerException):
        triton.InferenceServerClient(url).is_server_live(client_timeout=2)


def test_a_taken_grpc_port_stops_the_server_at_start_up(server, tmp_path):
    """grpcio shares a port between processes unless told not to; a second server must fail instead."""
    url, _, repo = server
    command = [sys.executable, "-m", "se_onnx", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
               "--grpc-port", url.rsplit(":", 1)[1], "--model-repository", str(repo)]  # fmt: skip
    failed = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 2 and "cannot listen for gRPC on 127.0.0.1:" in failed.stderr
    assert failed.stderr.strip().count("\n") == 0 and "Traceback" not in failed.stderr, failed.stderr


def test_a_cancelled_stream_stops_its_queued_requests(tmp_path):
    """A client that cancels its stream gets nothing more computed for it, and the server logs no
    unretrieved task errors from writing to a stream that has gone. The test waits for events
    (the first reply, then every request accounted for), so a faster or a loaded machine only
    changes how long it takes."""
    sent = 8
    repo = write_repo(tmp_path / "repo", {"slow": slow_model(1024, 24)})
    grpc_port = free_port()
    process, _ = start_server(repo, "--workers-per-model", "1", grpc_port=grpc_port)
    keep_open = threading.Event()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            raw = np.zeros((1, 1), np.float32).tobytes()
            tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])

            def requests():
                for i in range(sent):
                    yield pb.ModelInferRequest(model_name="slow", id=str(i), inputs=[tensor], raw_input_contents=[raw])
                keep_open.wait(60)  # the stream stays open until the client cancels it

            replies = stub.ModelStreamInfer(requests())
            first = next(replies)  # one run has ended; the single instance now runs the next
            assert not first.error_message, first
            replies.cancel()
            deadline = time.monotonic() + 60
            while True:  # until every request sent is accounted for, computed or dropped
                stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow")).model_stats[0].inference_stats
                if stats.success.count + stats.fail.count == sent:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.05)
        # The one answered, the one running when the cancel arrived, and at most one that started
        # between the reply and the cancel; every other request was dropped unrun.
        assert stats.success.count <= 3, stats
    finally:
        keep_open.set()
        assert stop_server(process) == 0
    log = server_log(process)
    assert "never retrieved" not in log and "Traceback" not in log, log[-3000:]


def test_sigterm_during_start_up_loading_exits_before_the_models_load(tmp_path):
    """The gRPC side drains on SIGTERM at once, even while models are still loading."""
    # Models load one after another, each warm-up run taking tens of ms or more: loading them
    # all takes far longer than the test waits, and a stop needs only the one loading to finish.
    slow = (slow_model(1024, 8), {"warmup": 10}, [1])
    repo = write_repo(tmp_path / "repo", {f"slow{i}": slow for i in range(60)})
    command = [sys.executable, "-m", "se_onnx", "serve", "--host", "127.0.0.1", "--port", str(port := free_port()),
               "--grpc-port", str(free_port()), "--model-repository", str(repo)]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if triton_http.InferenceServerClient(f"127.0.0.1:{port}").is_server_live():
                    break
            except Exception:  # not listening yet
                time.sleep(0.1)
        assert not triton_http.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
