"""A request whose client disconnects while it waits for an instance is dropped, never computed,
and counted (real server, raw socket closed mid-request)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx
import numpy as np
from service_helpers import (
    infer_json,
    slow_model,
    start_server,
    stop_server,
    write_repo,
)


def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="slow",version="1"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _wait_pending(url: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while _metric(httpx.get(f"http://{url}/metrics").text, "nv_inference_pending_request_count") < count:
        assert time.monotonic() < deadline, f"never {count} requests in flight"
        time.sleep(0.01)


def test_a_queued_request_of_a_gone_client_is_dropped_and_counted(tmp_path):
    # One instance; each run takes a while, so a second request waits for the first.
    repo = write_repo(tmp_path, {"slow": (slow_model(size=1536, matmuls=12), {"warmup": 0}, [1])})
    process, url = start_server(repo, "--intra-op-threads", "1")
    host, port = url.split(":")
    try:
        body = json.dumps(infer_json("x", np.ones((1, 1), np.float32))).encode()
        first = threading.Thread(
            target=lambda: httpx.post(f"http://{url}/v2/models/slow/infer", content=body, timeout=120)
        )
        first.start()
        _wait_pending(url, 1)  # the first request is running
        with socket.create_connection((host, int(port))) as gone:
            gone.sendall(
                b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            _wait_pending(url, 2)  # queued behind the first; then the client leaves
        first.join()
        deadline = time.monotonic() + 30
        while True:
            metrics = httpx.get(f"http://{url}/metrics").text
            if _metric(metrics, "se_onnx_inference_client_gone_total") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert _metric(metrics, "se_onnx_inference_client_gone_total") == 1
        time.sleep(1)  # had the dropped request been computed, it would have been by now
        metrics = httpx.get(f"http://{url}/metrics").text
        assert _metric(metrics, "nv_inference_exec_count") == 1  # only the first request ran
        assert _metric(metrics, "nv_inference_request_success") == 1
        assert _metric(metrics, "nv_inference_request_failure") == 1
    finally:
        assert stop_server(process) == 0
