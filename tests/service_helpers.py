"""Tiny models and a model-repository/app builder shared by the service tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from service.app import create_app
from service.config import ServerSettings

ROOT = Path(__file__).resolve().parents[1]

# Every protocol datatype and the ONNX element type it carries.
DATATYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def identity_model(datatypes=tuple(DATATYPES), shape=("N", 3)) -> onnx.ModelProto:
    """in_<TYPE> → Identity → out_<TYPE> for each datatype."""
    return _model(
        [helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]) for t in datatypes],
        [helper.make_tensor_value_info(f"in_{t}", DATATYPES[t], list(shape)) for t in datatypes],
        [helper.make_tensor_value_info(f"out_{t}", DATATYPES[t], list(shape)) for t in datatypes],
    )


def relu_neg_model(features: int = 4, batch: str | int = "N") -> onnx.ModelProto:
    """x [batch, features] → relu = Relu(x), neg = Neg(x)."""
    return _model(
        [helper.make_node("Relu", ["x"], ["relu"]), helper.make_node("Neg", ["x"], ["neg"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, [batch, features]),
            helper.make_tensor_value_info("neg", TensorProto.FLOAT, [batch, features]),
        ],
    )


def fixed_reshape_model() -> onnx.ModelProto:
    """x [N, 4] → y = x reshaped to [2, 2]: the metadata takes any N, the kernel only N = 1."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2, 2])
    return _model(
        [helper.make_node("Constant", [], ["shape"], value=shape), helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )


def gather_model() -> onnx.ModelProto:
    """x [N, 1] INT64 indices → y [N, 1] = [10, 20, 30][x]: an index past 2 fails the kernel."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [3], [10, 20, 30])
    return _model(
        [helper.make_node("Gather", ["table", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [table],
    )


def slow_model(size: int = 1024, matmuls: int = 2) -> onnx.ModelProto:
    """x [N, 1] → y = x, after a chain of size×size MatMuls on a constant matrix (a run takes tens
    of ms or more): slow enough to keep requests in flight. Every entry stays exactly 1/size (a
    power of two), so y equals x exactly."""
    ones = helper.make_tensor("shape", TensorProto.INT64, [2], [size, size])
    nodes = [
        helper.make_node("Constant", [], ["square"], value=ones),
        helper.make_node(
            "ConstantOfShape", ["square"], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0 / size])
        ),
        # a0 = c · (min(x·0) + 1) = c, but depends on x so that ONNX Runtime cannot fold the chain away.
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Constant", [], ["unit"], value=helper.make_tensor("u", TensorProto.FLOAT, [], [1.0])),
        helper.make_node("Mul", ["x", "zero"], ["x0"]),
        helper.make_node("ReduceMin", ["x0"], ["x0min"], keepdims=0),
        helper.make_node("Add", ["x0min", "unit"], ["scale"]),
        helper.make_node("Mul", ["c", "scale"], ["a0"]),
    ]
    for step in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"a{step}", f"a{step}"], [f"a{step + 1}"]))
    nodes += [
        helper.make_node("ReduceMax", [f"a{matmuls}"], ["m"], keepdims=0),
        helper.make_node("Constant", [], ["n"], value=helper.make_tensor("n", TensorProto.FLOAT, [], [float(size)])),
        helper.make_node("Mul", ["m", "n"], ["one"]),
        helper.make_node("Mul", ["x", "one"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )


def write_repo(root: Path, models: dict[str, onnx.ModelProto | tuple[onnx.ModelProto, dict | None, list[int]]]) -> Path:
    """A repository: a bare ModelProto becomes root/<name>.onnx; (model, config, versions) the Triton layout."""
    root.mkdir(parents=True, exist_ok=True)
    for name, spec in models.items():
        if isinstance(spec, onnx.ModelProto):
            onnx.save(spec, root / f"{name}.onnx")
            continue
        model, config, versions = spec
        for version in versions:
            (root / name / str(version)).mkdir(parents=True, exist_ok=True)
            onnx.save(model, root / name / str(version) / "model.onnx")
        if config is not None:
            (root / name / "config.json").write_text(json.dumps(config))
    return root


def wait_ready(client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/v2/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("server did not become ready")
        time.sleep(0.02)


@contextlib.contextmanager
def serve(root: Path, **options):
    """A started in-process app on `root` (lifespan run, models loaded) and its TestClient; gRPC
    is off unless `grpc_port` is given."""
    app = create_app(ServerSettings(model_repository=root, provider="cpu", **{"grpc_port": 0, **options}))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@contextlib.asynccontextmanager
async def serve_async(root: Path, **options):
    """The same for concurrent tests: an httpx.AsyncClient over ASGI, sharing the test's event loop."""
    app = create_app(ServerSettings(model_repository=root, provider="cpu", **{"grpc_port": 0, **options}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            while (await client.get("/v2/health/ready")).status_code != 200:
                await asyncio.sleep(0.01)
            yield app, client


def infer_json(name: str, array: np.ndarray, datatype: str = "FP32", **extra) -> dict:
    return {
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}],
        **extra,
    }


def binary_body(header: dict, chunks: list[bytes]) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text))}


def split_binary(response) -> tuple[dict, bytes]:
    size = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.content[:size]), response.content[size:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    repo: Path | None,
    *args: str,
    env: dict[str, str] | None = None,
    grpc_port: int | None = 0,
    scheme: str = "http",
    cwd: Path = ROOT,
    wait: str = "ready",
    **client_options,
) -> tuple[subprocess.Popen, str]:
    """`python -m se_onnx serve` on loopback, ready; (process, HTTP host:port). gRPC is off
    unless `grpc_port` is given (None: as the environment says), so that servers started in
    parallel do not race for 8001. Without `repo` the server picks its own, in `cwd`. `wait`:
    the health check to wait for ("live" while models are still loading).
    `client_options` go to the httpx client that polls readiness (TLS: `verify`)."""
    port = free_port()
    grpc = [] if grpc_port is None else ["--grpc-port", str(grpc_port)]
    # A file, not a pipe: the access log of a long run would fill a pipe and block the server.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - open as long as the server runs; server_log reads it
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("SE_ONNX_MODEL_REPOSITORY", None)  # the test's repository or none, never the shell's
    if repo is not None:
        environment["SE_ONNX_MODEL_REPOSITORY"] = str(repo)
    environment.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "se_onnx", "serve", "--host", "127.0.0.1", "--port", str(port), *grpc, *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    process.log = log  # Popen keeps no handle on a file it was given
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with httpx.Client(**client_options) as client:
        while True:
            try:
                if client.get(f"{scheme}://{url}/v2/health/{wait}").status_code == 200:
                    return process, url
            except httpx.HTTPError:  # not listening yet
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"server did not start: {server_log(process)[-2000:]}")
            time.sleep(0.1)


def server_log(process: subprocess.Popen) -> str:
    """What the server wrote to stderr so far."""
    process.log.seek(0)
    return process.log.read()


def stop_server(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
