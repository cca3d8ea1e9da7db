"""`se-onnx serve`: serve a model repository over the Open Inference Protocol (KServe v2 / Triton)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from se_onnx.errors import SeOnnxError
from service.config import ServerSettings, env_name

# Options about the API key and TLS go under their own heading in --help.
_SECURITY = ("api_key", "ssl_")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve ONNX models over HTTP and gRPC (Open Inference Protocol, Triton-compatible)",
        description="Serve every model of a repository directory over the Open Inference Protocol "
        "(KServe v2) as Triton does: HTTP with JSON and binary tensors, and Triton's gRPC service. Every "
        "option can also be set by the environment variable shown with it; an option given wins over its "
        "variable. Health: /v2/health/ready; metrics: /metrics; API docs: /docs.",
    )
    security = parser.add_argument_group("security")
    for name, field in ServerSettings.model_fields.items():
        group = security if name.startswith(_SECURITY) else parser
        group.add_argument(option(name), **_argument(name, field))
    parser.set_defaults(run=run)


def option(name: str) -> str:
    """The option of a settings field: model_repository → --model-repository."""
    return "--" + name.replace("_", "-")


def _argument(name: str, field: FieldInfo) -> dict[str, Any]:
    """add_argument's keywords for a settings field. Only options given reach the namespace
    (default SUPPRESS): the settings read the environment and hold the defaults. Values stay
    strings, and choices are shown but left to the settings to check, so a bad value gets the
    same one-line message from an option as from its variable or from the Python API."""
    default = "" if field.default is None else f" (default {field.default})"
    keywords: dict[str, Any] = {
        "default": argparse.SUPPRESS,
        "help": f"{field.description}{default} [env {env_name(name)}]",
    }
    if field.annotation is bool:
        keywords["action"] = argparse.BooleanOptionalAction
    elif get_origin(field.annotation) is Literal:
        keywords["metavar"] = "{" + ",".join(get_args(field.annotation)) + "}"
    else:
        keywords["metavar"] = name.rpartition("_")[2].upper()  # --grpc-port PORT, --ssl-keyfile KEYFILE
    return keywords


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The server's settings from the options given, the environment and the defaults; an invalid
    value or combination is a one-line SeOnnxError naming the option and its variable."""
    given = {name: value for name, value in vars(args).items() if name in ServerSettings.model_fields}
    try:
        return ServerSettings(**given)
    except ValidationError as error:
        raise SeOnnxError(_one_line(error)) from None


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across settings: its message names them
        return message
    name = str(first["loc"][0])
    # Constraint messages ("Input should be ...") do not say what was given; the value is shown
    # unless it is a secret. Messages of the model's own checks already name it.
    if first["type"] != "value_error" and ServerSettings.model_fields[name].repr:
        message += f", not {first['input']!r}"
    return f"{option(name)} ({env_name(name)}): {message}"


def _check_free(host: str, port: int, what: str) -> None:
    """A one-line start-up error for a port another process holds, before the server starts:
    found later, inside the server's start-up, it would come out as a traceback."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a port in TIME_WAIT is free
            probe.bind(address)
    except OSError as error:
        raise SeOnnxError(f"cannot listen for {what} on {host}:{port}: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn  # heavy; only `serve` needs it

    from service.app import create_app
    from service.logs import configure_logging
    from service.rest.connection import header_timeout_protocol

    settings = settings_from(args)
    # Both ports before anything starts: a taken one found inside uvicorn's or gRPC's start-up
    # would end in a log record and another exit status.
    _check_free(settings.host, settings.port, "HTTP")
    if settings.grpc_port:
        _check_free(settings.host, settings.grpc_port, "gRPC")
    log_config = configure_logging(settings.log_level)
    app = create_app(settings)

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
            host=settings.host,
            port=settings.port,
            log_config=log_config,
            log_level=settings.log_level,
            access_log=False,  # the app writes its own JSON access log
            http=header_timeout_protocol(settings.http_header_timeout),
            # uvicorn annotates whole seconds but hands the value to asyncio.timeout, which takes a float.
            timeout_graceful_shutdown=settings.request_timeout or None,  # type: ignore[arg-type]
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
            ssl_ca_certs=settings.ssl_ca_certs,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.ssl_ca_certs else ssl.CERT_NONE,
        )
    )
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal; a no-op handler
    # makes that re-raise harmless, so a graceful stop exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0 if server.started else 1
