"""Model metadata, model readiness and inference (JSON and binary tensor data)."""

from __future__ import annotations

import asyncio
import time
import zlib

from fastapi import APIRouter, Depends, Request, Response

from service.auth import require_scoped_key
from service.errors import ServiceError, bad_request
from service.schemas import ErrorResponse, InferRequest, InferResponse, ModelMetadata, StatisticsResponse, empty_ok, openapi_body
from service.tensors import HEADER_LENGTH, binary_outputs, encode_response, parse_request

router = APIRouter(
    prefix="/v2/models/{model_name}",
    tags=["models"],
    dependencies=[Depends(require_scoped_key)],
    responses={401: {"model": ErrorResponse}},
)


def _add(method: str, route: str, **kwargs):
    """Register `handler(request, model_name, version)` for …/versions/{version}<route> and, with
    version None (the newest), for <route>."""

    def register(handler):
        async def newest(request: Request, model_name: str):
            return await handler(request, model_name, None)

        newest.__name__ = f"{handler.__name__}_newest"
        router.add_api_route(route, newest, methods=[method], **kwargs)
        router.add_api_route("/versions/{version}" + route, handler, methods=[method], **kwargs)
        return handler

    return register


@_add("GET", "", response_model=ModelMetadata, summary="Model metadata")
async def model_metadata(request: Request, model_name: str, version: str | None) -> dict:
    repository = request.app.state.service.repository
    model = repository.get(model_name, version)
    return model.metadata(repository.versions(model_name))


@_add("GET", "/config", summary="Model configuration in Triton's form (max_batch_size, dims without the batch axis)")
async def model_config(request: Request, model_name: str, version: str | None) -> dict:
    return request.app.state.service.repository.get(model_name, version).triton_config()


@_add("GET", "/stats", response_model=StatisticsResponse, summary="Inference statistics of the model's versions (Triton's statistics extension)")
async def model_stats(request: Request, model_name: str, version: str | None) -> dict:
    repository = request.app.state.service.repository
    if version is not None:
        models = [repository.get(model_name, version)]
    else:
        repository.get(model_name)  # 404 / 503 as for any other request
        models = [repository.get(model_name, v) for v in repository.versions(model_name)]
    return {"model_stats": [model.stats.to_dict(model.name, model.version) for model in models]}


@_add("GET", "/ready", summary="200 when the model (version) is ready", **empty_ok("ready"))
async def model_ready(request: Request, model_name: str, version: str | None) -> Response:
    request.app.state.service.repository.get(model_name, version)
    return Response(status_code=200)


@_add(
    "POST",
    "/infer",
    summary="Run the model",
    response_model=InferResponse,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                     "description": f"JSON, or with binary outputs a JSON header of {HEADER_LENGTH} bytes and then the tensors"}},
    openapi_extra=openapi_body(
        InferRequest,
        f"JSON, or a JSON header of {HEADER_LENGTH} bytes followed by binary tensors "
        f"({HEADER_LENGTH}: 0 = the raw bytes of a single-input model's input)",
        binary=True,
    ),
)
async def infer(request: Request, model_name: str, version: str | None) -> Response:
    state = request.app.state.service
    started = time.perf_counter()
    model = state.repository.get(model_name, version)
    labels = {"model": model.name, "version": model.version}
    try:
        with model:
            # Read the body ourselves (not via a pydantic parameter): the size limit applies while
            # it streams, and binary tensors follow the JSON header in the same body.
            body = _decompress(await request.body(), request.headers.get("content-encoding"), state.config.max_request_size)
            infer_request, feeds = parse_request(body, request.headers.get(HEADER_LENGTH), model.inputs)
            chosen = binary_outputs(infer_request, list(model.outputs))
            timeout = _timeout(state.config.request_timeout, infer_request.parameters.get("timeout"))
            try:
                outputs = await asyncio.wait_for(model.infer(feeds, list(chosen)), timeout)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                raise ServiceError(503, f"request timed out after {timeout:g} s") from None
        header = {"model_name": model.name, "model_version": model.version}
        if infer_request.id is not None:
            header["id"] = infer_request.id
        content, json_size = encode_response(header, outputs, chosen)
    except Exception:
        state.metrics.failure.labels(**labels).inc()
        model.stats.request(False, time.perf_counter() - started)
        raise
    seconds = time.perf_counter() - started
    state.metrics.success.labels(**labels).inc()
    state.metrics.request_duration.labels(**labels).observe(seconds)
    model.stats.request(True, seconds)
    if json_size is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_size)})


def _timeout(server_seconds: float, request_microseconds: object) -> float | None:
    """The server's --request-timeout (0: none), shortened by the request's own `timeout` (µs)."""
    limits = [server_seconds] if server_seconds > 0 else []
    if isinstance(request_microseconds, int) and not isinstance(request_microseconds, bool) and request_microseconds > 0:
        limits.append(request_microseconds / 1e6)
    return min(limits) if limits else None


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent with tritonclient's request compression (gzip or deflate), never more
    than `limit` bytes once inflated."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise bad_request(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise bad_request(f"body is not valid {encoding} data: {error}") from None
    if len(inflated) > limit:
        raise ServiceError(413, f"request body inflates past the limit of {limit} bytes")
    return inflated
