"""`se-onnx serve`: serve a model repository over the Open Inference Protocol (KServe v2 / Triton)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
from pathlib import Path

from se_onnx.cli._common import env_default
from se_onnx.errors import SeOnnxError

API_KEY_SCOPES = ("repository", "all")


def default_model_repository() -> str:
    """The repository's bundled models/ next to the package when present, else ./models.

    Only a source checkout counts (pyproject.toml beside it): an installed package's parent is
    site-packages, where an unrelated top-level `models` package may live."""
    checkout = Path(__file__).resolve().parents[2]
    bundled = checkout / "models"
    return str(bundled) if bundled.is_dir() and (checkout / "pyproject.toml").is_file() else "models"


def _option(parser: argparse.ArgumentParser, flag: str, default, help: str, **kwargs) -> None:
    """An option whose default comes from SE_ONNX_<FLAG> (e.g. --max-request-size → SE_ONNX_MAX_REQUEST_SIZE)."""
    name = flag.lstrip("-")
    env = f"SE_ONNX_{name.upper().replace('-', '_')}"
    parser.add_argument(flag, default=env_default(name, default), help=f"{help} [env {env}]", **kwargs)


def _flag(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    name = flag.lstrip("-")
    env = f"SE_ONNX_{name.upper().replace('-', '_')}"
    enabled = (env_default(name) or "").strip().lower() in ("1", "true", "yes", "on")
    parser.add_argument(flag, action="store_true", default=enabled, help=f"{help} [env {env}=1]")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve ONNX models over HTTP and gRPC (Open Inference Protocol, Triton-compatible)",
        description="Serve every model of a repository directory over the Open Inference Protocol "
        "(KServe v2) as Triton does: HTTP with JSON and binary tensors, and Triton's gRPC service. Every option can also be set by the "
        "environment variable shown with it. Health: /v2/health/ready; metrics: /metrics; API docs: /docs.",
    )
    _option(parser, "--model-repository", default_model_repository(), "directory of models (default: the bundled models/, else ./models)", metavar="DIR")
    _option(parser, "--host", "0.0.0.0", "address to listen on (default 0.0.0.0)", metavar="ADDRESS")
    _option(parser, "--port", 8000, "HTTP port to listen on (default 8000)", type=int, metavar="PORT")
    _option(parser, "--grpc-port", 8001, "gRPC port to listen on, Triton's GRPCInferenceService (default 8001; 0 turns gRPC off)", type=int, metavar="PORT")
    _option(parser, "--provider", "auto", "execution provider for every model without its own (default auto: CUDA when usable, else CPU)", choices=("auto", "cpu", "cuda", "tensorrt"))
    _flag(parser, "--allow-cpu-fallback", "run on the CPU when the requested GPU provider is not usable, instead of failing at start-up")
    _option(parser, "--device-id", 0, "GPU device id (default 0)", type=int, metavar="ID")
    _option(parser, "--intra-op-threads", 0, "ONNX Runtime threads within an operator (default 0: ONNX Runtime's choice)", type=int, metavar="N")
    _option(parser, "--inter-op-threads", 0, "ONNX Runtime threads across operators (default 0: ONNX Runtime's choice)", type=int, metavar="N")
    _option(parser, "--max-request-size", 64 * 1024 * 1024, "largest request body in bytes (default 64 MB); larger ones get 413", type=int, metavar="BYTES")
    _option(parser, "--request-timeout", 60.0, "seconds a request may wait and run before it gets 503 (default 60; 0: no limit)", type=float, metavar="SECONDS")
    security = parser.add_argument_group("security")
    _option(security, "--api-key", None, "key that enables the repository API (index, load, unload); clients send it as X-API-Key or Authorization: Bearer. Prefer the environment variable or --api-key-file: a key on the command line shows in the process list", metavar="KEY")
    _option(security, "--api-key-file", None, "read the API key from this file (its first line)", metavar="FILE")
    _option(security, "--api-key-scope", "repository", "what the key guards: repository (default: index, load, unload) or all (every route and RPC but the health checks)", choices=API_KEY_SCOPES)
    _option(security, "--ssl-certfile", None, "serve HTTPS, and gRPC over TLS, with this PEM certificate (chain)", metavar="FILE")
    _option(security, "--ssl-keyfile", None, "the certificate's PEM private key (default: inside --ssl-certfile)", metavar="FILE")
    _option(security, "--ssl-ca-certs", None, "PEM bundle of CAs; clients must then present a certificate signed by one (mutual TLS)", metavar="FILE")
    _option(parser, "--log-level", "info", "log level (default info)", choices=("debug", "info", "warning", "error", "critical"))
    _option(parser, "--workers-per-model", 1, "instances (inference threads) per model without its own instance_count (default 1)", type=int, metavar="N")
    parser.set_defaults(run=run)


def _api_key(key: str | None, key_file: str | None) -> str | None:
    """The key from --api-key / SE_ONNX_API_KEY or the first line of --api-key-file (not both)."""
    if key_file is None:
        return key or None
    if key:
        raise SeOnnxError("give the API key once: --api-key (or SE_ONNX_API_KEY) or --api-key-file, not both")
    try:
        lines = Path(key_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SeOnnxError(f"{key_file}: cannot read the API key file ({getattr(error, 'strerror', None) or error})") from None
    if not lines or not lines[0].strip():
        raise SeOnnxError(f"{key_file}: the API key file is empty")
    return lines[0].strip()


def _readable(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    if not os.access(path, os.R_OK) or not Path(path).is_file():
        raise SeOnnxError(f"{path}: {flag} is not a readable file")
    return Path(path)


def _check_free(host: str, port: int, what: str) -> None:
    """A one-line start-up error for a port another process holds, before the server starts:
    found later, inside the server's start-up, it would come out as a traceback."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a port in TIME_WAIT is free
            probe.bind(address)
    except OSError as error:
        raise SeOnnxError(f"cannot listen for {what} on {host}:{port}: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn  # heavy; only `serve` needs it

    from service.app import create_app
    from service.config import ServerConfig
    from service.logs import configure_logging

    try:
        config = ServerConfig(
            model_repository=Path(args.model_repository),
            host=args.host,
            port=int(args.port),
            grpc_port=int(args.grpc_port),
            provider=args.provider,
            allow_cpu_fallback=args.allow_cpu_fallback,
            device_id=int(args.device_id),
            intra_op_threads=int(args.intra_op_threads),
            inter_op_threads=int(args.inter_op_threads),
            max_request_size=int(args.max_request_size),
            request_timeout=float(args.request_timeout),
            api_key=_api_key(args.api_key, args.api_key_file),
            api_key_scope=args.api_key_scope,
            ssl_certfile=_readable(args.ssl_certfile, "--ssl-certfile"),
            ssl_keyfile=_readable(args.ssl_keyfile, "--ssl-keyfile"),
            ssl_ca_certs=_readable(args.ssl_ca_certs, "--ssl-ca-certs"),
            log_level=args.log_level,
            workers_per_model=int(args.workers_per_model),
        )
    except ValueError as error:  # an environment variable that is not a number
        raise SeOnnxError(f"invalid option value: {error}") from None
    if config.provider not in ("auto", "cpu", "cuda", "tensorrt"):
        raise SeOnnxError(f"--provider must be auto, cpu, cuda or tensorrt, not {config.provider!r}")
    if config.log_level not in ("debug", "info", "warning", "error", "critical"):
        raise SeOnnxError(f"--log-level must be debug, info, warning, error or critical, not {config.log_level!r}")
    if not 0 <= config.grpc_port <= 65535:
        raise SeOnnxError(f"--grpc-port must be a port number (0 turns gRPC off), not {config.grpc_port}")
    if config.grpc_port and config.grpc_port == config.port:
        raise SeOnnxError(f"--grpc-port and --port are both {config.port}; give gRPC a port of its own")
    if config.workers_per_model < 1 or config.max_request_size < 1:
        raise SeOnnxError("--workers-per-model and --max-request-size must be at least 1")
    if config.api_key_scope not in API_KEY_SCOPES:
        raise SeOnnxError(f"--api-key-scope must be repository or all, not {config.api_key_scope!r}")
    if config.api_key_scope == "all" and not config.api_key:
        raise SeOnnxError("--api-key-scope all needs an API key (SE_ONNX_API_KEY, --api-key-file or --api-key)")
    if (config.ssl_keyfile or config.ssl_ca_certs) and not config.ssl_certfile:
        raise SeOnnxError("--ssl-keyfile and --ssl-ca-certs need --ssl-certfile")
    if not config.model_repository.is_dir():
        raise SeOnnxError(f"{config.model_repository}: model repository is not a directory")
    if config.grpc_port:
        _check_free(config.host, config.grpc_port, "gRPC")
    log_config = configure_logging(config.log_level)
    app = create_app(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Report not ready at once, so load balancers stop sending while in-flight requests
            # finish, and start gRPC's drain; a signal handler may run between any two steps of
            # the event loop, so the plane hears of it through the loop.
            plane = app.state.data_plane
            plane.ready = False
            asyncio.get_running_loop().call_soon_threadsafe(plane.stop_accepting)
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=log_config,
            log_level=config.log_level,
            access_log=False,  # the app writes its own JSON access log
            timeout_graceful_shutdown=config.request_timeout or None,
            ssl_certfile=config.ssl_certfile,
            ssl_keyfile=config.ssl_keyfile,
            ssl_ca_certs=config.ssl_ca_certs,
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.ssl_ca_certs else ssl.CERT_NONE,
        )
    )
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal; a no-op handler
    # makes that re-raise harmless, so a graceful stop exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0 if server.started else 1
