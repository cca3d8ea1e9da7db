"""The real server: `python -m se_onnx serve` under uvicorn on loopback, driven by the official
tritonclient.http; options from environment variables; graceful SIGTERM with requests in flight."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from service_helpers import (
    ROOT,
    free_port,
    identity_model,
    relu_neg_model,
    slow_model,
    start_server,
    stop_server,
    write_repo,
)
from tritonclient.utils import InferenceServerException

KEY = "k3y"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = write_repo(
        tmp_path_factory.mktemp("repo"),
        {"relu": relu_neg_model(), "types": identity_model(["FP16", "INT64", "BOOL", "BYTES"])},
    )
    process, url = start_server(repo, env={"SE_ONNX_API_KEY": KEY, "SE_ONNX_MAX_REQUEST_SIZE": "1000000"})
    yield url, repo
    assert stop_server(process) == 0


def test_tritonclient_health_metadata_and_index(server):
    url, _ = server
    client = triton.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("relu") and not client.is_model_ready("missing")
    assert client.get_server_metadata()["name"] == "se-onnx"
    metadata = client.get_model_metadata("relu")
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["inputs"][0]["shape"] == [-1, 4]
    index = client.get_model_repository_index(headers={"X-API-Key": KEY})
    assert {(row["name"], row["state"]) for row in index} == {("relu", "READY"), ("types", "READY")}
    with pytest.raises(InferenceServerException, match="API key"):
        client.get_model_repository_index()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer(server, binary):
    url, _ = server
    client = triton.InferenceServerClient(url)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    tensor = triton.InferInput("x", [3, 4], "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("relu", binary_data=binary),
        triton.InferRequestedOutput("neg", binary_data=binary),
    ]
    result = client.infer("relu", [tensor], outputs=outputs, request_id="abc")
    assert result.get_response()["id"] == "abc"
    np.testing.assert_array_equal(result.as_numpy("relu"), np.maximum(x, 0))
    np.testing.assert_array_equal(result.as_numpy("neg"), -x)
    for algorithm in ("gzip", "deflate"):
        compressed = client.infer("relu", [tensor], outputs=outputs, request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(compressed.as_numpy("neg"), -x)
    # No outputs named: tritonclient asks for all of them as binary.
    np.testing.assert_array_equal(client.infer("relu", [tensor]).as_numpy("neg"), -x)


def test_tritonclient_datatypes_binary(server):
    url, _ = server
    client = triton.InferenceServerClient(url)
    arrays = {
        "FP16": np.array([[0.5, -1.5, 2.0]], np.float16),
        "INT64": np.array([[-(2**40), 0, 7]], np.int64),
        "BOOL": np.array([[True, False, True]]),
        "BYTES": np.array([[b"a", "ünï".encode(), b""]], dtype=object),
    }
    inputs = []
    for datatype, array in arrays.items():
        tensor = triton.InferInput(f"in_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("types", inputs)
    for datatype, array in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(f"out_{datatype}"), array)


def test_tritonclient_system_shared_memory(server):
    """tritonclient.utils.shared_memory and tritonclient.http unchanged: the input from a region,
    one output into a region, the other inline; status and unregister; registering takes the key."""
    import tritonclient.utils.shared_memory as shm

    url, _ = server
    client = triton.InferenceServerClient(url)
    auth = {"X-API-Key": KEY}
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    key = f"/se-onnx-server-test-{os.getpid()}"
    handle = shm.create_shared_memory_region("io", key, 2 * x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x])
        with pytest.raises(InferenceServerException, match="API key"):
            client.register_system_shared_memory("io", key, 2 * x.nbytes)
        client.register_system_shared_memory("io", key, 2 * x.nbytes, headers=auth)
        assert client.get_system_shared_memory_status(headers=auth) == [
            {"name": "io", "key": key, "offset": 0, "byte_size": 2 * x.nbytes}
        ]
        tensor = triton.InferInput("x", [3, 4], "FP32")
        tensor.set_shared_memory("io", x.nbytes)
        relu = triton.InferRequestedOutput("relu", binary_data=True)
        relu.set_shared_memory("io", x.nbytes, offset=x.nbytes)
        result = client.infer("relu", [tensor], outputs=[relu, triton.InferRequestedOutput("neg")])
        assert "data" not in result.get_output("relu") and result.get_output("relu")["shape"] == [3, 4]
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(handle, np.float32, [3, 4], offset=x.nbytes), np.maximum(x, 0)
        )
        np.testing.assert_array_equal(result.as_numpy("neg"), -x)
        with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
            client.get_cuda_shared_memory_status()
        client.unregister_system_shared_memory("io", headers=auth)
        assert client.get_system_shared_memory_status(headers=auth) == []
        with pytest.raises(InferenceServerException, match="no shared memory region 'io'") as error:
            client.infer("relu", [tensor])
        assert error.value.status() == "400"
    finally:
        shm.destroy_shared_memory_region(handle)


def test_tritonclient_errors(server):
    url, _ = server
    client = triton.InferenceServerClient(url)
    tensor = triton.InferInput("x", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 5\]") as error:
        client.infer("relu", [tensor])
    assert error.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model") as error:
        client.get_model_metadata("missing")
    assert error.value.status() == "404"


def test_tritonclient_request_too_large_is_413(server):
    url, _ = server
    client = triton.InferenceServerClient(url)
    tensor = triton.InferInput("x", [65536, 4], "FP32")  # 1 MiB of data, past the 1,000,000-byte limit
    tensor.set_data_from_numpy(np.ones((65536, 4), np.float32))
    with pytest.raises(InferenceServerException, match="larger than the limit of 1000000 bytes") as error:
        client.infer("relu", [tensor])
    assert error.value.status() == "413"
    assert client.is_server_ready()


def test_tritonclient_load_and_unload(server):
    url, repo = server
    client = triton.InferenceServerClient(url)
    headers = {"Authorization": f"Bearer {KEY}"}
    write_repo(repo, {"extra": relu_neg_model()})
    client.load_model("extra", headers=headers)
    assert client.is_model_ready("extra")
    client.unload_model("extra", headers=headers)
    assert not client.is_model_ready("extra")
    client.load_model("extra", config='{"max_batch_size": 8, "dynamic_batching": {}}', headers=headers)
    assert client.get_model_metadata("extra")["parameters"]["max_batch_size"] == 8


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path):
    repo = write_repo(tmp_path / "repo", {"slow": slow_model(1024, 16)})
    process, url = start_server(repo, "--workers-per-model", "1")
    results: dict[int, object] = {}
    finished: dict[int, float] = {}

    def call(i: int) -> None:
        client = triton.InferenceServerClient(url, network_timeout=120)
        tensor = triton.InferInput("x", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.full((1, 1), i, np.float32))
        try:
            results[i] = client.infer("slow", [tensor]).as_numpy("y")
        except Exception as error:  # recorded and reported by the assertion below
            results[i] = error
        finished[i] = time.monotonic()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the three are sent; one runs, two wait for the single instance
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for thread in threads:
        thread.join(timeout=120)
    assert stop_server(process) == 0
    assert len(finished) == 3 and max(finished.values()) > signalled, "no request was in flight at SIGTERM"
    assert {
        i: float(np.asarray(r).reshape(-1)[0]) if isinstance(r, np.ndarray) else repr(r) for i, r in results.items()
    } == {0: 0.0, 1: 1.0, 2: 2.0}
    # After the signal the port no longer takes connections.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1).close()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_without_cuda_fails_at_start_up_unless_fallback_allowed(tmp_path):
    repo = write_repo(tmp_path / "repo", {"relu": relu_neg_model()})
    command = [sys.executable, "-m", "se_onnx", "serve", "--model-repository", str(repo), "--port", str(free_port())]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SE_ONNX_PROVIDER": "cuda"}
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    assert "se-onnx: error: the cuda provider (CUDAExecutionProvider) is not available" in failed.stderr
    process, url = start_server(repo, env={"SE_ONNX_PROVIDER": "cuda", "SE_ONNX_ALLOW_CPU_FALLBACK": "1"})
    try:
        metadata = triton.InferenceServerClient(url).get_model_metadata("relu")
        assert metadata["parameters"]["providers"] == ["CPUExecutionProvider"]
    finally:
        assert stop_server(process) == 0


def test_tritonclient_model_config(server):
    url, _ = server
    client = triton.InferenceServerClient(url)
    config = client.get_model_config("relu")
    assert config["name"] == "relu" and config["max_batch_size"] == 0
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]


def test_tritonclient_statistics(server):
    url, _ = server
    client = triton.InferenceServerClient(url)
    tensor = triton.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 4), np.float32))
    before = client.get_inference_statistics("relu")["model_stats"][0]["inference_count"]
    client.infer("relu", [tensor])
    stats = client.get_inference_statistics("relu")["model_stats"][0]
    assert stats["inference_count"] == before + 2
    assert {s["name"] for s in client.get_inference_statistics()["model_stats"]} >= {"relu", "types"}
