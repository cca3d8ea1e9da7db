"""Soak test of `se-onnx serve`: minutes of mixed traffic on loopback, watching the server's memory and open files.

One server process (API key set) gets, at once and for `--duration` seconds:
  http_json     JSON inference (`data` in the body); http_json_32: a batch of 32, a 1 MB body
  http_binary   binary tensor inference (tritonclient.http)
  grpc_stream   requests on `ModelStreamInfer` streams (tritonclient.grpc), each stream opened, used and closed
  shm           inputs and outputs in system shared memory, each region created, registered, used,
                unregistered and destroyed
  repo_*        a model unloaded and loaded again through the repository API (with the key), and run
                once after each load (repo_unload, repo_load, repo_infer)
  bad           mistakes that must get their 4xx (malformed JSON, unknown model, wrong datatype, data past
                the body, wrong key, an unregistered region, an unknown model over gRPC)

Every second it samples the server's RSS (/proc/PID/status) and open file descriptors (/proc/PID/fd).
The baseline is taken after a warm-up of every kind, once its clients are gone. It prints start, peak
and end RSS and fds, requests and errors by kind, and p50/p99 latency by kind, and exits 1 when any
request got an unexpected answer, when the end RSS exceeds the baseline by more than `--rss-growth`,
or when the fds are not back to the baseline within `--settle` seconds of the traffic ending.

    python benchmarks/soak_service.py                  # 3 minutes
    python benchmarks/soak_service.py --duration 600
    python benchmarks/soak_service.py --quick          # 20 s smoke run
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_service import Server, server_caller  # noqa: E402

from models import build_samples  # noqa: E402

API_KEY = "soak-key"
KEY_HEADER = {"X-API-Key": API_KEY}


class Tally:
    """Latencies and unexpected outcomes by kind, shared by the traffic threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.first_error: dict[str, str] = {}

    def timed(self, kind: str, call: Callable[[], object]) -> None:
        started = time.perf_counter()
        try:
            call()
        except Exception as error:  # counted and shown, the soak goes on
            self.error(kind, error)
            return
        self.ok(kind, time.perf_counter() - started)

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)

    def error(self, kind: str, error: object) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.first_error.setdefault(kind, f"{type(error).__name__}: {error}"[:300])

    def count(self) -> int:
        with self.lock:
            return sum(map(len, self.latencies.values())) + sum(self.errors.values())


class Sampler(threading.Thread):
    """RSS and open fds of a process, once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []  # (seconds, RSS bytes, fds)
        self.done = threading.Event()

    def sample(self) -> tuple[int, int]:
        with open(f"/proc/{self.pid}/status") as status:
            rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{self.pid}/fd"))

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.wait(1.0):
            self.samples.append((time.monotonic() - started, *self.sample()))


def build_repository(root: Path) -> None:
    """`small` (resnet_like, 1×3×32×32) for the traffic, `churn` (tiny_conv) for loads and unloads."""
    for name, model in (("small", build_samples.resnet_like()), ("churn", build_samples.tiny_conv())):
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, root / name / "1" / "model.onnx")
    (root / "small" / "config.json").write_text(json.dumps({"instance_count": 2}))


def _expect(status: int, wanted: int, what: str) -> None:
    if status != wanted:
        raise RuntimeError(f"{what}: status {status}, expected {wanted}")


def _post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    host, port = url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def bad_requests(server: Server, x: np.ndarray) -> list[tuple[str, Callable[[], None]]]:
    """Mistakes and the status each must get; each call raises when the server answers otherwise."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    infer = "/v2/models/small/infer"
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}

    def post(path: str, document: object, wanted: int, headers: dict[str, str] | None = None) -> Callable[[], None]:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return lambda: _expect(_post(server.url, path, body, headers), wanted, path)

    def grpc_unknown_model() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            inputs = [grpcclient.InferInput("input", list(x.shape), "FP32")]
            inputs[0].set_data_from_numpy(x)
            client.infer("no_such_model", inputs, client_timeout=60)
        except InferenceServerException as error:
            if "StatusCode.NOT_FOUND" not in str(error.status()):
                raise
        else:
            raise RuntimeError("an unknown model over gRPC was served")
        finally:
            client.close()

    return [
        ("malformed JSON", post(infer, b'{"inputs": [', 400)),
        ("unknown model", post("/v2/models/no_such_model/infer", {"inputs": []}, 404)),
        ("booleans as FP32", post(infer, {"inputs": [{**tensor, "data": [True] * x.size}]}, 400)),
        ("data past the body", post(infer, {"inputs": [{**tensor, "parameters": {"binary_data_size": 64}}]}, 400)),
        ("wrong API key", post("/v2/repository/models/churn/load", {}, 401, {"X-API-Key": "wrong"})),
        (
            "unregistered region",
            post(infer, {"inputs": [{**tensor, "parameters": {"shared_memory_region": "nowhere"}}]}, 400),
        ),
        ("unknown model over gRPC", grpc_unknown_model),
    ]


def stream_cycle(server: Server, x: np.ndarray, requests: int, tally: Tally) -> None:
    """Open a stream, send `requests` requests (at most 4 unanswered), read every reply, close it."""
    import tritonclient.grpc as grpcclient

    replies: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    sent: dict[str, float] = {}
    try:
        client.start_stream(callback=lambda result, error: replies.put((time.perf_counter(), result, error)))
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        received = 0
        for index in range(requests):
            sent[str(index)] = time.perf_counter()
            client.async_stream_infer("small", [tensor], request_id=str(index))
            while len(sent) - received >= 4 or (index == requests - 1 and received < requests):
                at, result, error = replies.get(timeout=60)
                received += 1
                if error is not None:
                    tally.error("grpc_stream", error)
                else:
                    tally.ok("grpc_stream", at - sent[result.get_response().id])
    finally:
        client.stop_stream()
        client.close()


def shm_cycle(server: Server, x: np.ndarray, expected: np.ndarray, requests: int, name: str, tally: Tally) -> None:
    """Create a region, register it (with the key), run `requests` requests through it, unregister, destroy."""
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    out_bytes = expected.nbytes
    handle = shm.create_shared_memory_region(name, f"/{name}", x.nbytes + out_bytes)
    client = httpclient.InferenceServerClient(server.url, network_timeout=60)
    try:
        client.register_system_shared_memory(name, f"/{name}", x.nbytes + out_bytes, headers=KEY_HEADER)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_shared_memory(name, x.nbytes)
        output = httpclient.InferRequestedOutput("output", binary_data=True)
        output.set_shared_memory(name, out_bytes, offset=x.nbytes)

        def call() -> None:
            shm.set_shared_memory_region(handle, [x])
            client.infer("small", [tensor], outputs=[output])
            got = shm.get_contents_as_numpy(handle, np.float32, list(expected.shape), offset=x.nbytes)
            if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                raise RuntimeError("shared memory output differs from the binary one")

        for _ in range(requests):
            tally.timed("shm", call)
        client.unregister_system_shared_memory(name, headers=KEY_HEADER)
    finally:
        client.close()
        shm.destroy_shared_memory_region(handle)


def repository_cycle(server: Server, x: np.ndarray, tally: Tally) -> None:
    """Unload `churn`, load it again, and run it once: each load builds a new ONNX Runtime session."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url, network_timeout=120)
    try:
        tally.timed("repo_unload", lambda: client.unload_model("churn", headers=KEY_HEADER))
        tally.timed("repo_load", lambda: client.load_model("churn", headers=KEY_HEADER))
        tensor = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x[:, :1, :8, :8].copy())
        tally.timed("repo_infer", lambda: client.infer("churn", [tensor]))
    finally:
        client.close()


def traffic(server: Server, x: np.ndarray, expected: np.ndarray, until: float, limit: int, tally: Tally) -> None:
    """Every kind of traffic in its own thread until `until` (monotonic) or `limit` requests in all."""
    bad = bad_requests(server, x)

    def going() -> bool:
        return time.monotonic() < until and tally.count() < limit

    def plain(tensors: str, kind: str, data: np.ndarray) -> Callable[[], None]:
        def loop() -> None:
            call = server_caller(server.url, "small", data, tensors)(0)
            while going():
                tally.timed(kind, call)

        return loop

    # A batch of 32 makes a JSON body of about 1 MB, which the server decodes in a thread.
    batch = np.repeat(x, 32, axis=0)

    def streams() -> None:
        while going():
            try:
                stream_cycle(server, x, 50, tally)
            except Exception as error:
                tally.error("grpc_stream", error)

    def regions() -> None:
        for cycle in range(limit):
            if not going():
                break
            try:
                shm_cycle(server, x, expected, 20, f"soak-{os.getpid()}-{cycle}", tally)
            except Exception as error:
                tally.error("shm", error)

    def repository() -> None:
        while going():
            try:
                repository_cycle(server, x, tally)
            except Exception as error:
                tally.error("repo_load", error)
            time.sleep(1.0)

    def mistakes() -> None:
        while going():
            for _, call in bad:
                tally.timed("bad", call)
            time.sleep(0.2)

    threads = [
        threading.Thread(target=work)
        for work in (
            plain("json", "http_json", x),
            plain("json", "http_json_32", batch),
            plain("binary", "http_binary", x),
            streams,
            regions,
            repository,
            mistakes,
        )
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()  # drop the clients that closures held, so their connections close


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds of traffic (default 180; quick 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 s")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop earlier after this many requests")
    parser.add_argument(
        "--rss-growth", type=float, default=10.0, help="largest end RSS over the baseline, in percent (default 10)"
    )
    parser.add_argument("--settle", type=float, default=20.0, help="seconds the fds may take to return (default 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    args = parser.parse_args(argv)
    duration = args.duration or (20.0 if args.quick else 180.0)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        build_repository(repository)
        server = Server(repository, 1, ("--api-key", API_KEY))
        try:
            sampler = Sampler(server.process.pid)
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(server.url)
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            expected = client.infer("small", [tensor]).as_numpy("output")
            client.close()

            # Warm-up: every kind once, so that first-use allocations (sessions' arenas, gRPC's
            # threads, import-time caches) are in the baseline; then its connections must close.
            warm = Tally()
            traffic(server, x, expected, time.monotonic() + min(10.0, duration / 4), 10**9, warm)
            baseline_fds = _settled_fds(sampler, None, args.settle)
            baseline_rss, _ = sampler.sample()

            tally = Tally()
            sampler.start()
            started = time.monotonic()
            traffic(server, x, expected, started + duration, args.max_requests, tally)
            seconds = time.monotonic() - started
            end_fds = _settled_fds(sampler, baseline_fds, args.settle)
            sampler.done.set()
            sampler.join()
            end_rss, _ = sampler.sample()
        finally:
            server.stop()

    samples = sampler.samples or [(0.0, end_rss, end_fds)]
    summary = {
        "seconds": round(seconds, 1),
        "rss_mb": {
            "start": baseline_rss / 2**20,
            "peak": max(rss for _, rss, _ in samples) / 2**20,
            "end": end_rss / 2**20,
            "growth_pct": (end_rss - baseline_rss) / baseline_rss * 100,
            "bound_pct": args.rss_growth,
            # The trend: a leak keeps climbing, a one-off allocation (a new thread's arena) does not.
            "quarters": [samples[len(samples) * q // 4][1] / 2**20 for q in (1, 2, 3)],
        },
        "fds": {"start": baseline_fds, "peak": max(fds for _, _, fds in samples), "end": end_fds},
        "requests": {
            kind: {
                "ok": len(tally.latencies[kind]),
                "errors": tally.errors[kind],
                **(
                    {
                        "p50_ms": statistics.median(tally.latencies[kind]) * 1e3,
                        "p99_ms": _percentile(tally.latencies[kind], 0.99) * 1e3,
                    }
                    if tally.latencies[kind]
                    else {}
                ),
            }
            for kind in sorted(set(tally.latencies) | set(tally.errors))
        },
        "samples": [{"s": round(at, 1), "rss_mb": rss / 2**20, "fds": fds} for at, rss, fds in samples],
        "first_errors": dict(tally.first_error),
        "warm_up_errors": dict(warm.first_error),
    }
    failures = []
    if summary["rss_mb"]["growth_pct"] > args.rss_growth:
        failures.append(f"RSS grew {summary['rss_mb']['growth_pct']:.1f} % (bound {args.rss_growth:g} %)")
    if end_fds > baseline_fds:
        failures.append(f"{end_fds} fds open {args.settle:g} s after the traffic, {baseline_fds} before it")
    errors = {kind: count for kind, count in tally.errors.items() if count}
    warm_errors = {kind: count for kind, count in warm.errors.items() if count}
    if errors or warm_errors:
        failures.append(f"unexpected answers: {errors} (warm-up {warm_errors})")
    _report(summary, failures)
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "failures": failures}, indent=2) + "\n")
    return 1 if failures else 0


def _settled_fds(sampler: Sampler, target: int | None, settle: float) -> int:
    """The server's fd count once it reaches `target` (or, with None, stops changing), or after `settle` s."""
    deadline = time.monotonic() + settle
    previous = -1
    while True:
        _, fds = sampler.sample()
        done = fds <= target if target is not None else fds == previous
        if done or time.monotonic() > deadline:
            return fds
        previous = fds
        time.sleep(1.0)


def _report(summary: dict, failures: list[str]) -> None:
    rss, fds = summary["rss_mb"], summary["fds"]
    print(f"traffic for {summary['seconds']} s")
    print(
        f"RSS  start {rss['start']:.1f} MB, peak {rss['peak']:.1f} MB, end {rss['end']:.1f} MB "
        f"({rss['growth_pct']:+.1f} %, bound {rss['bound_pct']:g} %); "
        f"at 1/4, 1/2, 3/4 of the run {', '.join(f'{mb:.1f}' for mb in rss['quarters'])} MB"
    )
    print(f"fds  start {fds['start']}, peak {fds['peak']}, end {fds['end']}")
    print(f"{'kind':12s} {'ok':>8s} {'errors':>7s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for kind, row in summary["requests"].items():
        p50, p99 = row.get("p50_ms", float("nan")), row.get("p99_ms", float("nan"))
        print(f"{kind:12s} {row['ok']:8d} {row['errors']:7d} {p50:8.2f} {p99:8.2f}")
    for kind, message in {**summary["warm_up_errors"], **summary["first_errors"]}.items():
        print(f"first error ({kind}): {message}")
    print("FAIL: " + "; ".join(failures) if failures else "OK")


if __name__ == "__main__":
    raise SystemExit(main())
