"""The FastAPI application: `create_app(settings)` wires the data plane, routers, middleware, the gRPC server
and lifespan."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from se_onnx.runtime.sessions import resolve_provider
from service import __version__
from service.config import ServerSettings
from service.dataplane import DataPlane
from service.errors import ServiceError, first_error
from service.rest.middleware import AccessLog, BodyLimit, Compression
from service.rest.routers import health, inference, metrics, repository, shared_memory
from service.rest.schemas import COMPONENTS, ErrorResponse

log = logging.getLogger("service.app")
# Below this many bytes a compressed response saves less than the time spent compressing it.
COMPRESSION_MIN_BYTES = 1024


class _App(FastAPI):
    """FastAPI, with the OpenAPI document amended once, when first asked for."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        document = super().openapi()  # kept as self.openapi_schema, so the changes below stay
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(COMPONENTS)
        # FastAPI documents its 422 on every route with parameters; this server answers 400 instead.
        for operation in (op for path in document["paths"].values() for op in path.values()):
            operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return document


def create_app(settings: ServerSettings) -> FastAPI:
    """The server for `settings` (validated when they were built: invalid ones never get here).
    Raises SeOnnxError at once when the server-wide provider cannot be used (CUDA asked for but
    not working, and no --allow-cpu-fallback)."""
    provider = resolve_provider(
        settings.provider, allow_cpu_fallback=settings.allow_cpu_fallback, device_id=settings.device_id
    )
    if provider != settings.provider:
        # 'auto' picking one is expected; a named GPU provider replaced by the CPU deserves a warning.
        level = logging.INFO if settings.provider == "auto" else logging.WARNING
        log.log(level, "provider resolved", extra={"requested": settings.provider, "provider": provider})
    plane = DataPlane(settings.model_copy(update={"provider": provider}))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Which folder is served, absolute: a relative one depends on where the server was started.
        log.info("serving model repository", extra={"path": str(settings.model_repository)})
        # Models load in the background so that /v2/health/live answers during a long start-up.
        plane.start()
        grpc_server = None
        try:
            if settings.grpc_port:
                from service.grpc.server import (
                    GrpcServer,  # grpc is only imported when it serves
                )

                grpc_server = GrpcServer(plane, plane.config)
                await grpc_server.start()
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()
            await plane.close()
            # The spans of the last requests leave before the process does (SIGTERM lands here too).
            await asyncio.to_thread(plane.tracing.shutdown)

    app = _App(
        title="se-onnx inference server",
        version=__version__,
        description="ONNX models over the Open Inference Protocol (KServe v2), as Triton serves it.",
        lifespan=lifespan,
        responses={code: {"model": ErrorResponse} for code in (400, 404, 413, 503)},
    )
    app.state.data_plane = plane
    routers = (
        health.router,
        inference.router,
        repository.router,
        shared_memory.router,
        shared_memory.cuda_router,
        metrics.router,
    )
    for router in routers:
        app.include_router(router)
    _add_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        limit=settings.max_request_size,
        budget=plane.request_bytes,
        timeout=settings.http_body_timeout,
        min_rate=settings.http_min_upload_rate,
    )
    app.add_middleware(Compression, minimum_size=COMPRESSION_MIN_BYTES)
    app.add_middleware(AccessLog)
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": message}, the shape Triton clients parse."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, first_error(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        # The headers carry meaning (Allow on 405), so they leave with the rebuilt body.
        response = _error(error.status_code, str(error.detail))
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # The client left while sending its body: its mistake, not the server's, and no traceback.
        client = request.client
        log.info(
            "client gone",
            extra={"path": request.url.path, "client": f"{client.host}:{client.port}" if client else None},
        )
        return Response(status_code=499)  # nobody reads it; the access log shows what happened

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return _error(500, f"internal server error: {type(error).__name__}: {error}")
