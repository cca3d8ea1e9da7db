"""Benchmark `se-onnx serve` against ONNX Runtime in-process, on the same models and inputs.

Starts the server on loopback, drives it with tritonclient.http (binary tensors) and tritonclient.grpc, and prints:
  protocols    ResNet-50-sized, batch 1, concurrency 1 and 4: gRPC, gRPC + shared memory, HTTP binary,
               HTTP + shared memory and HTTP JSON vs direct ORT, interleaved in one run (goals: gRPC ≥ 0.97,
               shared memory ≥ 0.98, JSON at concurrency 4 ≥ 0.75 of direct ORT); tiny_conv p50 over
               each protocol at concurrency 1 (goals gRPC p50 ≤ 0.35 ms, JSON ≤ 0.5 ms)
  resnet50     ResNet-50-sized, batch 1, concurrency 1 and 4 (1 and 4 instances): server vs direct ORT
               throughput (goal ≥ 95 %)
  tiny         tiny_conv, concurrency 1: p50 / p99 latency through the server (goal p50 ≤ 1 ms)
  batching     resnet_like, concurrency 16: throughput with vs without dynamic batching (goal ≥ 2×), and
               the most batching can gain: ONNX Runtime's items/s at batch 16 over batch 1, in process
  rss          server RSS before and after many requests on tiny_conv (goal < 5 % growth)
  instances    resnet_like, 4 instances, concurrency 4: one shared session vs a session per instance
  budgets      resnet_like, 4 instances, concurrency 4: gRPC and HTTP binary throughput of a server with
               the resource budgets at their defaults vs one with them effectively off, interleaved
               (goal: ratio ≥ 0.98, i.e. nothing measurable); `--only budgets` runs it alone
  tracing      ResNet-50-sized, 4 instances, concurrency 4, gRPC: a server with --trace sampling every
               request (exported over OTLP/HTTP to a sink on loopback) vs one without, interleaved
               (goal: ratio ≥ 0.97); `--only tracing` runs it alone

    python benchmarks/bench_service.py                # full run (minutes; run on a quiet machine)
    python benchmarks/bench_service.py --quick        # smoke run with tiny settings
    python benchmarks/bench_service.py --json out.json
    python benchmarks/bench_service.py --only protocols
    python benchmarks/bench_service.py --only budgets --quick
    python benchmarks/bench_service.py --only tracing
    python benchmarks/bench_service.py --only json --mlserver /tmp/mlserver-venv/bin/python

  json         with `--only json`: HTTP JSON at concurrency 4 on the ResNet-50-sized model, se-onnx and (with
               `--mlserver PYTHON`, a Python with MLServer 1.7 installed in an environment of its own)
               MLServer serving the same file through benchmarks/mlserver_onnx.py, both posting the same
               pre-encoded body, interleaved with direct ORT: each one's ratio to direct ORT
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import build_samples  # noqa: E402
from se_onnx.runtime.sessions import make_session  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_repository(root: Path, max_batch_size: int) -> None:
    """resnet50 (batch 1 traffic), tiny, and the same small conv model with and without batching."""
    resnet50 = build_samples.resnet50_sized()
    onnx.save(resnet50, root / "resnet50.onnx")
    # As many instances as concurrent callers, like the direct runs' threads on one shared session.
    (root / "resnet50_x4" / "1").mkdir(parents=True)
    onnx.save(resnet50, root / "resnet50_x4" / "1" / "model.onnx")
    (root / "resnet50_x4" / "config.json").write_text(json.dumps({"instance_count": 4}))
    onnx.save(build_samples.tiny_conv(), root / "tiny.onnx")
    small = build_samples.resnet_like()
    onnx.save(small, root / "small.onnx")
    (root / "small_batched" / "1").mkdir(parents=True)
    onnx.save(small, root / "small_batched" / "1" / "model.onnx")
    config = {"max_batch_size": max_batch_size, "dynamic_batching": {"max_queue_delay_us": 1000}}
    (root / "small_batched" / "config.json").write_text(json.dumps(config))
    for name, per_instance in (("small_shared", False), ("small_separate", True)):
        (root / name / "1").mkdir(parents=True)
        onnx.save(small, root / name / "1" / "model.onnx")
        (root / name / "config.json").write_text(
            json.dumps({"instance_count": 4, "session_per_instance": per_instance})
        )


class Server:
    def __init__(
        self, repository: Path, threads: int, options: tuple[str, ...] = (), env: dict[str, str] | None = None
    ):
        import tritonclient.http as triton

        self.port = _free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.grpc_url = f"127.0.0.1:{_free_port()}"
        command = [sys.executable, "-m", "se_onnx", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--grpc-port", self.grpc_url.rsplit(":", 1)[1],
                   "--model-repository", str(repository), "--provider", "cpu", "--log-level", "warning",
                   "--intra-op-threads", str(threads), *options]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})
        client = triton.InferenceServerClient(self.url)
        deadline = time.monotonic() + 300
        while True:
            try:
                if client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


class MLServer:
    """MLServer serving `model` (an ONNX file) as "resnet50" through benchmarks/mlserver_onnx.py,
    run by `python` (the Python of MLServer's own environment), with its default settings
    (one parallel inference worker process) apart from the ports and debug logging."""

    def __init__(self, python: str, model: Path, threads: int):
        import http.client

        self.folder = Path(tempfile.mkdtemp(prefix="mlserver-"))
        (self.folder / "resnet50").mkdir()
        (self.folder / "resnet50" / "model.onnx").symlink_to(model)
        (self.folder / "resnet50" / "model-settings.json").write_text(
            json.dumps({
                "name": "resnet50", "implementation": "mlserver_onnx.OnnxModel",
                "parameters": {"uri": "./model.onnx", "extra": {"intra_op_threads": threads}},
            })
        )  # fmt: skip
        self.port = _free_port()
        self.url = f"127.0.0.1:{self.port}"
        (self.folder / "settings.json").write_text(
            json.dumps({
                "host": "127.0.0.1", "http_port": self.port, "grpc_port": _free_port(),
                "metrics_port": _free_port(), "debug": False,
            })
        )  # fmt: skip
        mlserver = str(Path(python).with_name("mlserver"))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
        self.process = subprocess.Popen([mlserver, "start", str(self.folder)], cwd=self.folder, env=env)
        deadline = time.monotonic() + 300
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/v2/models/resnet50/ready")
                if connection.getresponse().status == 200:
                    return
            except OSError:  # not listening yet
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("MLServer did not start")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def _run_threads(concurrency: int, requests: int, work) -> tuple[float, list[float]]:
    """Run `work(worker)` `requests` times over `concurrency` threads; (seconds, per-call latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker(index: int) -> None:
        call = work(index)
        mine = []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            started = time.perf_counter()
            call()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def server_caller(url: str, model: str, x: np.ndarray, tensors: str = "binary"):
    """HTTP callers, one client per thread. `tensors`: "binary" (tritonclient.http, binary tensor
    data), "shm" (tritonclient.http, tensors in system shared memory: see `_shm_caller`), or "json"
    (JSON `data` in a body encoded once, posted with http.client: tritonclient re-encodes the
    150k floats of a ResNet input on every call, which costs the client more than the server's whole
    JSON path and would measure the client instead)."""
    import tritonclient.http as triton

    def make(index: int):
        client = triton.InferenceServerClient(url, network_timeout=300)
        output = client.get_model_metadata(model)["outputs"][0]
        if tensors == "json":
            return _json_call(url, model, x, output["name"])
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        requested = triton.InferRequestedOutput(output["name"], binary_data=True)
        if tensors == "shm":
            return _shm_call(client, model, x, tensor, requested, output["shape"], f"http-{model}-{index}")
        tensor.set_data_from_numpy(x, binary_data=True)
        return lambda: client.infer(model, [tensor], outputs=[requested])

    return make


def grpc_caller(url: str, model: str, x: np.ndarray, shm: bool = False):
    """gRPC (raw_input_contents, or tensors in system shared memory), one client and channel per thread."""
    import tritonclient.grpc as triton

    def make(index: int):
        client = triton.InferenceServerClient(url)
        output = client.get_model_metadata(model).outputs[0]
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        requested = triton.InferRequestedOutput(output.name)
        if shm:
            return _shm_call(client, model, x, tensor, requested, list(output.shape), f"grpc-{model}-{index}")
        tensor.set_data_from_numpy(x)
        return lambda: client.infer(model, [tensor], outputs=[requested], client_timeout=300)

    return make


# Shared memory regions by name, made and registered once (so that no measurement times their
# set-up; clients cannot be kept, tritonclient.http's belong to the thread that made them), and
# destroyed when the benchmark ends.
_SHM_REGIONS: dict = {}


def _shm_call(client, model: str, x: np.ndarray, tensor, requested, output_shape: list[int], name: str):
    """A call with input and output in a region of the caller's own, as a client on the same host
    does it: each call copies the input in and reads the output where the server wrote it."""
    import tritonclient.utils.shared_memory as shm

    shape = [x.shape[0], *output_shape[1:]]
    out_bytes = int(np.prod(shape)) * 4
    region = f"bench-{os.getpid()}-{name}"
    if region not in _SHM_REGIONS:
        _SHM_REGIONS[region] = shm.create_shared_memory_region(region, f"/{region}", x.nbytes + out_bytes)
        client.register_system_shared_memory(region, f"/{region}", x.nbytes + out_bytes)
    handle = _SHM_REGIONS[region]
    tensor.set_shared_memory(region, x.nbytes)
    requested.set_shared_memory(region, out_bytes, offset=x.nbytes)

    def call():
        shm.set_shared_memory_region(handle, [x])
        client.infer(model, [tensor], outputs=[requested])
        return shm.get_contents_as_numpy(handle, np.float32, shape, offset=x.nbytes)

    return call


def _json_call(url: str, model: str, x: np.ndarray, output: str):
    """One keep-alive connection posting a pre-encoded JSON request; the reply's data becomes an array."""
    import http.client

    import orjson

    host, port = url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1)}
    body = orjson.dumps({"inputs": [tensor], "outputs": [{"name": output}]}, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {"Content-Type": "application/json"}

    def call():
        connection.request("POST", f"/v2/models/{model}/infer", body, headers)
        response = connection.getresponse()
        reply = orjson.loads(response.read())
        if response.status != 200:
            raise RuntimeError(reply)
        return np.array(reply["outputs"][0]["data"], np.float32)

    return call


def direct_caller(session, x: np.ndarray):
    name = session.get_inputs()[0].name
    return lambda _index: lambda: session.run(None, {name: x})


def throughput(concurrency: int, requests: int, make) -> float:
    _run_threads(concurrency, max(concurrency * 2, requests // 10), make)  # warm-up
    seconds, _ = _run_threads(concurrency, requests, make)
    return requests / seconds


def compare_all(rounds: int, concurrency: int, requests: int, makers: dict) -> dict:
    """Throughput of each caller measured in rotating rounds (A B C, B C A, …): each one's median,
    and the median and range of its round-by-round ratio to the first, so that a drift of the
    machine's speed shows up as spread instead of bias."""
    names = list(makers)
    rps: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            rps[name].append(throughput(concurrency, requests, makers[name]))
    baseline = names[0]
    result = {f"{name}_rps": statistics.median(values) for name, values in rps.items()}
    for name in names[1:]:
        ratios = [b / a for a, b in zip(rps[baseline], rps[name])]
        result[f"{name}_ratio"] = statistics.median(ratios)
        result[f"{name}_ratio_range"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
    return {**result, "rounds": rounds}


def compare(rounds: int, concurrency: int, requests: int, make_a, make_b) -> dict:
    """A against B with compare_all: their medians, and B/A's median ratio and range."""
    row = compare_all(rounds, concurrency, requests, {"a": make_a, "b": make_b})
    low, high = map(float, row["b_ratio_range"].split("-"))
    return {
        "a_rps": row["a_rps"],
        "b_rps": row["b_rps"],
        "ratio": row["b_ratio"],
        "ratio_min": low,
        "ratio_max": high,
        "rounds": rounds,
    }


def latencies_all(rounds: int, requests: int, makers: dict) -> dict:
    """p50 and p99 (ms) of each caller at concurrency 1, in rotating rounds: the median of the rounds' values."""
    names = list(makers)
    p50: dict[str, list[float]] = {name: [] for name in names}
    p99: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        _run_threads(1, 50, makers[name])  # warm-up: connections, first-call costs
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            _, latencies = _run_threads(1, requests, makers[name])
            ordered = sorted(latencies)
            p50[name].append(statistics.median(ordered) * 1e3)
            p99[name].append(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3)
    result = {}
    for name in names:
        result[f"{name}_p50_ms"] = statistics.median(p50[name])
        result[f"{name}_p99_ms"] = statistics.median(p99[name])
    return {**result, "rounds": rounds}


def protocols(server: Server, repository: Path, rounds: int, requests: int, threads: int) -> dict[str, dict]:
    """Direct ORT, gRPC, HTTP binary and HTTP JSON on the same model and inputs, interleaved."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    session = make_session(repository / "resnet50.onnx", "cpu", intra_op_threads=threads)
    results = {}
    # Concurrency 4 against four instances, as the direct runs' four threads share one session.
    for concurrency, model in ((1, "resnet50"), (4, "resnet50_x4")):
        makers = {
            "direct": direct_caller(session, image),
            "grpc": grpc_caller(server.grpc_url, model, image),
            "grpc_shm": grpc_caller(server.grpc_url, model, image, shm=True),
            "http_binary": server_caller(server.url, model, image),
            "http_shm": server_caller(server.url, model, image, "shm"),
            "http_json": server_caller(server.url, model, image, "json"),
        }
        goal = "grpc_ratio >= 0.97, *_shm_ratio >= 0.98" + (", http_json_ratio >= 0.75" if concurrency == 4 else "")
        results[f"protocols_{model}_c{concurrency}"] = {
            **compare_all(rounds, concurrency, requests, makers),
            "goal": goal,
        }
    del session
    tiny = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    makers = {
        "grpc": grpc_caller(server.grpc_url, "tiny", tiny),
        "http_binary": server_caller(server.url, "tiny", tiny),
        "http_json": server_caller(server.url, "tiny", tiny, "json"),
    }
    results["protocols_tiny_c1"] = {
        **latencies_all(rounds, max(requests * 10, 50), makers),
        "goal": "grpc_p50_ms <= 0.35, http_json_p50_ms <= 0.5",
    }
    return results


def json_reference(server: Server, repository: Path, rounds: int, requests: int, threads: int, mlserver: str | None):
    """Direct ORT, se-onnx's HTTP JSON and (with `mlserver`) MLServer's, ResNet-50-sized at
    concurrency 4, interleaved; every JSON caller posts the same pre-encoded body."""
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    session = make_session(repository / "resnet50.onnx", "cpu", intra_op_threads=threads)
    makers = {
        "direct": direct_caller(session, image),
        "se_onnx_json": server_caller(server.url, "resnet50_x4", image, "json"),
    }
    other = MLServer(mlserver, repository / "resnet50.onnx", threads) if mlserver else None
    try:
        if other is not None:
            makers["mlserver_json"] = lambda _index: _json_call(other.url, "resnet50", image, "output")
        return {"json_resnet50_c4": {**compare_all(rounds, 4, requests, makers), "load_average": os.getloadavg()[0]}}
    finally:
        if other is not None:
            other.stop()


# Every budget so high that no request meets it: the same code runs, with nothing to enforce.
BUDGETS_OFF = (
    *("--max-inflight-bytes", str(2**62), "--grpc-stream-inflight", "65536"),
    *("--grpc-max-concurrent-streams", str(2**31 - 1), "--grpc-max-concurrent-rpcs", str(2**31 - 1)),
    *("--http-header-timeout", "3600", "--http-body-timeout", "3600", "--http-min-upload-rate", "1"),
)


def budgets(root: Path, rounds: int, requests: int, threads: int) -> dict[str, dict]:
    """A small model (so that per-request costs show) at concurrency 4, over gRPC and HTTP binary,
    on two servers at once: budgets at their defaults and effectively off, in rotating rounds."""
    (root / "small" / "1").mkdir(parents=True)
    onnx.save(build_samples.resnet_like(), root / "small" / "1" / "model.onnx")
    (root / "small" / "config.json").write_text(json.dumps({"instance_count": 4}))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    default, off = Server(root, threads), Server(root, threads, BUDGETS_OFF)
    try:
        results = {}
        for name, caller, address in (("grpc", grpc_caller, "grpc_url"), ("http_binary", server_caller, "url")):
            row = compare(
                rounds,
                4,
                requests * 20,
                caller(getattr(off, address), "small", x),
                caller(getattr(default, address), "small", x),
            )
            results[f"budgets_{name}_c4"] = {
                "off_rps": row.pop("a_rps"),
                "default_rps": row.pop("b_rps"),
                **row,
                "goal": "ratio >= 0.98",
            }
        return results
    finally:
        default.stop()
        off.stop()


def _span_sink() -> str:
    """An OTLP/HTTP endpoint on loopback that takes every export and keeps nothing."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{sink.server_address[1]}"


def tracing(root: Path, rounds: int, requests: int, threads: int) -> dict[str, dict]:
    """ResNet-50-sized at concurrency 4 over gRPC, on two servers at once: one tracing every request
    (six spans each, exported over OTLP/HTTP) and one without --trace, in rotating rounds."""
    (root / "resnet50_x4" / "1").mkdir(parents=True)
    onnx.save(build_samples.resnet50_sized(), root / "resnet50_x4" / "1" / "model.onnx")
    (root / "resnet50_x4" / "config.json").write_text(json.dumps({"instance_count": 4}))
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    env = {
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": _span_sink(),
    }
    plain, traced = Server(root, threads), Server(root, threads, ("--trace",), env)
    try:
        row = compare(
            rounds,
            4,
            requests,
            grpc_caller(plain.grpc_url, "resnet50_x4", image),
            grpc_caller(traced.grpc_url, "resnet50_x4", image),
        )
        return {
            "tracing_grpc_c4": {
                "off_rps": row.pop("a_rps"),
                "traced_rps": row.pop("b_rps"),
                **row,
                "goal": "ratio >= 0.97",
            }
        }
    finally:
        traced.stop()
        plain.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few requests")
    parser.add_argument("--requests", type=int, help="requests per throughput measurement (default 60; quick 8)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per comparison (default 5; quick 1)")
    parser.add_argument("--rss-requests", type=int, help="requests for the RSS check (default 10000; quick 200)")
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads, server and direct (default 0: all cores)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", choices=("protocols", "budgets", "tracing", "json"), help="run one section only")
    parser.add_argument("--mlserver", metavar="PYTHON", help="with --only json: a Python with MLServer 1.7 installed")
    args = parser.parse_args(argv)
    requests = args.requests or (8 if args.quick else 60)
    rounds = args.rounds or (1 if args.quick else 5)
    rss_requests = args.rss_requests or (200 if args.quick else 10_000)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only == "budgets":
            return _report(budgets(Path(tmp), rounds, requests, args.threads), args.json)
        if args.only == "tracing":
            return _report(tracing(Path(tmp), rounds, requests, args.threads), args.json)
        repository = Path(tmp)
        build_repository(repository, max_batch_size=16)
        server = Server(repository, args.threads)
        try:
            if args.only == "json":
                return _report(
                    json_reference(server, repository, rounds, requests, args.threads, args.mlserver), args.json
                )
            results.update(protocols(server, repository, rounds, requests, args.threads))
            if args.only == "protocols":
                return _report(results, args.json)
            rng = np.random.default_rng(0)
            image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
            session = make_session(repository / "resnet50.onnx", "cpu", intra_op_threads=args.threads)
            # Concurrency 4 against one instance (requests queue, each run uses every core) and
            # against four (runs overlap, as the direct runs' four threads do on one session).
            for concurrency, model in ((1, "resnet50"), (4, "resnet50"), (4, "resnet50_x4")):
                row = compare(
                    rounds,
                    concurrency,
                    requests,
                    direct_caller(session, image),
                    server_caller(server.url, model, image),
                )
                results[f"{model}_c{concurrency}"] = {
                    "direct_rps": row.pop("a_rps"),
                    "server_rps": row.pop("b_rps"),
                    **row,
                    "goal": "ratio >= 0.95",
                }
            del session

            tiny = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
            make = server_caller(server.url, "tiny", tiny)
            _run_threads(1, 50, make)
            _, latencies = _run_threads(1, max(requests * 50, 50), make)
            ordered = sorted(latencies)
            results["tiny_c1"] = {
                "p50_ms": statistics.median(latencies) * 1e3,
                "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
                "goal": "p50 <= 1 ms",
            }

            small = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
            # What batching can gain at most: ONNX Runtime's own items/s at batch 16 over batch 1,
            # in process, with no HTTP in the way.
            small_session = make_session(repository / "small.onnx", "cpu", intra_op_threads=args.threads)
            one = throughput(1, requests * 40, direct_caller(small_session, small))
            sixteen = 16 * throughput(1, requests * 4, direct_caller(small_session, np.repeat(small, 16, axis=0)))
            results["batching_ceiling"] = {
                "batch1_items_per_s": one,
                "batch16_items_per_s": sixteen,
                "gain": sixteen / one,
            }
            del small_session
            row = compare(
                rounds,
                16,
                requests * 20,
                server_caller(server.url, "small", small),
                server_caller(server.url, "small_batched", small),
            )
            results["batching_c16"] = {
                "without_rps": row.pop("a_rps"),
                "with_rps": row.pop("b_rps"),
                **row,
                "goal": "ratio >= 2",
            }

            row = compare(
                rounds,
                4,
                requests * 20,
                server_caller(server.url, "small_shared", small),
                server_caller(server.url, "small_separate", small),
            )
            results["instances_c4"] = {"shared_rps": row.pop("a_rps"), "per_instance_rps": row.pop("b_rps"), **row}

            make = server_caller(server.url, "tiny", tiny)
            _run_threads(4, min(1000, rss_requests), make)
            before = server.rss_bytes()
            _run_threads(4, rss_requests, make)
            after = server.rss_bytes()
            results["rss"] = {
                "requests": rss_requests, "before_mb": before / 2**20, "after_mb": after / 2**20,
                "growth_pct": (after - before) / before * 100, "goal": "< 5 %",
            }  # fmt: skip
        finally:
            server.stop()
            if _SHM_REGIONS:
                import tritonclient.utils.shared_memory as shm

                for handle in _SHM_REGIONS.values():
                    shm.destroy_shared_memory_region(handle)
    return _report(results, args.json)


def _report(results: dict[str, dict], json_path: str | None) -> int:
    for name, values in results.items():
        shown = ", ".join(
            f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items()
        )
        print(f"{name:14s} {shown}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
