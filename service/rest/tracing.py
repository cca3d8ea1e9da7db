"""The HTTP server span of each inference request under --trace, after OpenTelemetry's HTTP conventions."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response

from service.dataplane import DataPlane
from service.errors import ServiceError

STATUS = "http.response.status_code"

Handler = Callable[[Request, DataPlane, str, str | None], Awaitable[Response]]


def traced(handler: Handler) -> Handler:
    """`handler` inside a server span named after its route, continuing the trace of the request's
    `traceparent` header; the response's status (or the refusal's, and its message) ends it.
    Without --trace the handler runs as it is."""

    @functools.wraps(handler)
    async def call(request: Request, plane: DataPlane, model_name: str, version: str | None) -> Response:
        tracing = plane.tracing
        if not tracing.enabled:
            return await handler(request, plane, model_name, version)
        route = request.scope["route"].path
        with tracing.server(f"{request.method} {route}", request.headers, _attributes(request, route)) as span:
            try:
                response = await handler(request, plane, model_name, version)
            except ServiceError as error:
                span.outcome(STATUS, error.status, str(error.status), error.message, fault=error.status >= 500)
                raise
            span.outcome(
                STATUS, response.status_code, str(response.status_code) if response.status_code >= 400 else None
            )
            return response

    return call


def _attributes(request: Request, route: str) -> dict[str, Any]:
    url = request.url
    attributes: dict[str, Any] = {
        "http.request.method": request.method,
        "http.route": route,
        "url.path": url.path,
        "url.scheme": url.scheme,
        "network.protocol.version": request.scope.get("http_version", "1.1"),
    }
    if url.hostname:
        attributes["server.address"] = url.hostname
    if url.port:
        attributes["server.port"] = url.port
    if request.client:
        attributes["client.address"] = request.client.host
    if agent := request.headers.get("user-agent"):
        attributes["user_agent.original"] = agent
    return attributes
