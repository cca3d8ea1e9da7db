"""What a client can make the server hold is bounded: a gRPC stream flood that reads no replies,
slow headers and bodies over HTTP, the shared byte budget; and a client that leaves mid-upload is
a client event, not a server error. Real servers on loopback, raw sockets and gRPC clients; every
wait is for an event, under a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from service_helpers import (
    binary_body,
    free_port,
    relu_neg_model,
    serve_async,
    server_log,
    slow_model,
    start_server,
    stop_server,
    write_repo,
)
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

MB = 1024 * 1024


def _rss(pid: int) -> int:
    """The resident memory of process `pid` in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _until(condition, timeout: float, what: str, step: float = 0.02):
    """Poll `condition()` until it is truthy (returned) or `timeout` seconds pass (failure)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(step)
    return result


@pytest.mark.slow
def test_a_stream_flood_that_reads_no_replies_holds_only_the_streams_budget(tmp_path):
    """300 requests of 1 MiB on one stream, no reply read: the server stops reading at
    --grpc-stream-inflight, the client's writes block, and the server's RSS grows by less than
    64 MiB (without the limit it would hold every request and its reply: over 600 MiB)."""
    repo = write_repo(tmp_path, {"relu": relu_neg_model()})
    grpc_port = free_port()
    process, _ = start_server(
        repo, "--grpc-stream-inflight", "4", "--max-request-size", str(2 * MB), grpc_port=grpc_port
    )
    rows = MB // 16  # [rows, 4] FP32 is 1 MiB
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[rows, 4])
    request = pb.ModelInferRequest(
        model_name="relu", inputs=[tensor], raw_input_contents=[np.ones((rows, 4), np.float32).tobytes()]
    )

    async def flood() -> tuple[int, int, int]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(request)  # the model and the server's buffers are warm
            before = _rss(process.pid)
            call = stub.ModelStreamInfer()
            written = 0
            for _ in range(300):
                try:  # a write that cannot finish within a second is held back by flow control
                    await asyncio.wait_for(call.write(request), 1.0)
                except asyncio.TimeoutError:
                    break
                written += 1
            peak = _rss(process.pid)
            call.cancel()
            # The server still serves others, and gives the stream's memory back.
            await stub.ModelInfer(request)
            return written, before, peak

    try:
        written, before, peak = asyncio.run(flood())
        assert written < 300, "the client's writes were never held back"
        assert peak - before < 64 * MB, (written, before, peak)
    finally:
        assert stop_server(process) == 0


def test_grpc_calls_past_the_limit_are_resource_exhausted(tmp_path):
    repo = write_repo(tmp_path, {"relu": relu_neg_model()})
    grpc_port = free_port()
    process, _ = start_server(repo, "--grpc-max-concurrent-rpcs", "2", grpc_port=grpc_port)

    async def calls() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            streams = [stub.ModelStreamInfer() for _ in range(2)]
            for stream in streams:  # each open stream is a call in progress once its first message is in
                await stream.write(pb.ModelInferRequest(model_name="nope"))
                assert (await stream.read()).error_message
            try:
                await stub.ServerLive(pb.ServerLiveRequest())
            except grpc.aio.AioRpcError as error:
                code = error.code()
            else:
                code = grpc.StatusCode.OK
            for stream in streams:
                stream.cancel()
            # Served again once the server has seen the streams end, which takes a moment under load.
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    await stub.ServerLive(pb.ServerLiveRequest())
                    return code
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    assert asyncio.get_running_loop().time() < deadline, "the limit still holds after the streams ended"
                    await asyncio.sleep(0.05)

    try:
        assert asyncio.run(calls()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        assert stop_server(process) == 0


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """A server with small timeouts and a 3 MiB budget for the HTTP tests."""
    repo = write_repo(tmp_path_factory.mktemp("repo"), {"relu": relu_neg_model()})
    options = ["--http-header-timeout", "1", "--http-body-timeout", "1", "--http-min-upload-rate", str(MB)]
    process, url = start_server(repo, *options, "--max-request-size", str(3 * MB), "--max-inflight-bytes", str(3 * MB))
    host, port = url.split(":")
    yield process, url, (host, int(port))
    assert stop_server(process) == 0


def _closed(sock: socket.socket) -> bytes | None:
    """What the server sent before closing `sock`, or None while it is still open."""
    sock.setblocking(False)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except BlockingIOError:
        return None
    except ConnectionResetError:
        pass
    return received or b"(closed)"


def _relu_body(rows: int) -> tuple[bytes, dict]:
    header = {
        "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "parameters": {"binary_data_size": rows * 16}}]
    }
    return binary_body(header, [np.ones((rows, 4), np.float32).tobytes()])


def test_slow_headers_and_silent_connections_are_closed_while_others_are_served(http_server):
    process, url, address = http_server
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    silent = [socket.create_connection(address) for _ in range(5)]
    slow = [socket.create_connection(address) for _ in range(20)]
    opened = time.monotonic()
    try:
        sent = 0
        with httpx.Client() as client:
            # A byte at a time to every slow connection, a normal request in between, until the
            # server has closed them all.
            while not all(_closed(sock) is not None for sock in slow + silent):
                for sock in slow:
                    if sent < len(request):
                        with contextlib.suppress(OSError):  # already closed by the server
                            sock.send(request[sent : sent + 1])
                sent += 1
                assert client.get(f"http://{url}/v2/health/ready").status_code == 200
                assert time.monotonic() - opened < 15, "slow connections were never closed"
                time.sleep(0.05)  # the pace of the slow clients
        assert time.monotonic() - opened >= 1  # not before the header timeout
        for sock in slow + silent:
            sock.setblocking(True)
    finally:
        for sock in slow + silent:
            sock.close()
    assert '"request headers timed out"' in server_log(process)


def test_a_stalled_body_gets_408_and_its_bytes_go_back_to_the_budget(http_server):
    process, url, address = http_server
    body, headers = _relu_body(MB // 16)  # 1 MiB of tensor data
    head = (
        b"POST /v2/models/relu/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with socket.create_connection(address) as stalled:
        stalled.sendall(head + body[: len(body) // 2])  # half the body, then nothing
        answer = _until(lambda: _closed(stalled), 15, "closed the stalled upload")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    # The budget (3 MiB) has its bytes back: a request of 2.5 MiB fits.
    body, headers = _relu_body(5 * MB // 32)
    response = httpx.post(f"http://{url}/v2/models/relu/infer", content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    log = server_log(process)
    assert '"request body timed out"' in log and "Traceback" not in log


def test_a_trickling_body_gets_408(http_server):
    process, url, address = http_server
    body, headers = _relu_body(4)
    head = (
        b"POST /v2/models/relu/infer HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with socket.create_connection(address) as trickle:
        trickle.sendall(head)
        answer = None
        for byte in body:  # a byte every 50 ms: far below the minimum rate
            with contextlib.suppress(OSError):
                trickle.send(bytes([byte]))
            if (answer := _closed(trickle)) is not None:
                break
            trickle.setblocking(True)
            time.sleep(0.05)
        answer = answer or _until(lambda: _closed(trickle), 15, "closed the trickling upload")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def _gone_count(url: str) -> float:
    metrics = httpx.get(f"http://{url}/metrics").text
    match = re.search(r'^se_onnx_inference_client_gone_total{model="relu",version="1"} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_client_that_leaves_mid_upload_is_logged_at_info_and_counted(http_server):
    process, url, address = http_server
    before = _gone_count(url)
    body, headers = _relu_body(MB // 16)
    with socket.create_connection(address) as leaving:
        leaving.sendall(
            b"POST /v2/models/relu/infer HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 4]
        )
    _until(lambda: _gone_count(url) == before + 1, 10, "counted the client as gone")
    records = [json.loads(line) for line in server_log(process).splitlines() if line.startswith("{")]
    gone = [r for r in records if r["message"] == "client gone"]
    assert gone and gone[-1]["level"] == "info" and "exception" not in gone[-1]
    assert not [r for r in records if r["level"] in ("error", "critical")], records[-5:]
    access = [r for r in records if r["message"] == "request" and r.get("path") == "/v2/models/relu/infer"]
    assert access[-1]["status"] == 499


def test_a_request_past_the_byte_budget_gets_503_while_others_hold_it(tmp_path):
    """Two concurrent requests of 600 KiB against a 1 MiB budget: the second is refused while the
    first is held (its model busy), and served once the first is answered."""
    repo = write_repo(tmp_path, {"slow": (slow_model(1024, 16), {"warmup": 0}, [1])})
    rows = 600 * 1024 // 4
    header = {
        "inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32", "parameters": {"binary_data_size": rows * 4}}]
    }
    body, headers = binary_body(header, [np.ones((rows, 1), np.float32).tobytes()])

    async def scenario() -> None:
        async with serve_async(repo, max_request_size=MB, max_inflight_bytes=MB, workers_per_model=1) as (app, client):
            first = asyncio.ensure_future(client.post("/v2/models/slow/infer", content=body, headers=headers))
            model = app.state.data_plane.model("slow")
            deadline = time.monotonic() + 30
            while not model.inflight:
                assert time.monotonic() < deadline and not first.done(), "the first request never ran"
                await asyncio.sleep(0.005)
            second = await client.post("/v2/models/slow/infer", content=body, headers=headers)
            assert second.status_code == 503 and "--max-inflight-bytes" in second.json()["error"], second.text
            assert (await first).status_code == 200
            assert app.state.data_plane.request_bytes.held == 0
            again = await client.post("/v2/models/slow/infer", content=body, headers=headers)
            assert again.status_code == 200

    asyncio.run(scenario())
