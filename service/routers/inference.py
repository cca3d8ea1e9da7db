"""Model metadata, model readiness and inference (JSON and binary tensor data)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request, Response

from service.errors import ServiceError
from service.schemas import InferRequest, InferResponse, ModelMetadata
from service.tensors import HEADER_LENGTH, binary_outputs, encode_response, parse_request

router = APIRouter(prefix="/v2/models/{model_name}", tags=["models"])


def _paths(route: str) -> list[str]:
    return [route, "/versions/{version}" + route]


def _add(method: str, route: str, **kwargs):
    """Register one handler for both the model path and its /versions/{version} form."""

    def register(handler):
        for path in _paths(route):
            router.add_api_route(path, handler, methods=[method], **kwargs)
        return handler

    return register


@_add("GET", "", response_model=ModelMetadata, summary="Model metadata")
async def model_metadata(request: Request, model_name: str, version: str | None = None) -> dict:
    repository = request.app.state.service.repository
    model = repository.get(model_name, version)
    return model.metadata(repository.versions(model_name))


@_add("GET", "/config", summary="Model configuration in Triton's form (max_batch_size, dims without the batch axis)")
async def model_config(request: Request, model_name: str, version: str | None = None) -> dict:
    return request.app.state.service.repository.get(model_name, version).triton_config()


@_add("GET", "/ready", summary="200 when the model (version) is ready")
async def model_ready(request: Request, model_name: str, version: str | None = None) -> Response:
    request.app.state.service.repository.get(model_name, version)
    return Response(status_code=200)


@_add(
    "POST",
    "/infer",
    summary="Run the model",
    response_model=InferResponse,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": f"JSON, or JSON followed by binary tensors with the {HEADER_LENGTH} header",
        }
    },
)
async def infer(request: Request, model_name: str, version: str | None = None) -> Response:
    state = request.app.state.service
    started = time.perf_counter()
    model = state.repository.get(model_name, version)
    labels = {"model": model.name, "version": model.version}
    try:
        with model:
            # Read the body ourselves (not via a pydantic parameter): the size limit applies while
            # it streams, and binary tensors follow the JSON header in the same body.
            body = await request.body()
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
        raise
    state.metrics.success.labels(**labels).inc()
    state.metrics.request_duration.labels(**labels).observe(time.perf_counter() - started)
    if json_size is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_size)})


def _timeout(server_seconds: float, request_microseconds: object) -> float | None:
    """The server's --request-timeout (0: none), shortened by the request's own `timeout` (µs)."""
    limits = [server_seconds] if server_seconds > 0 else []
    if isinstance(request_microseconds, int) and not isinstance(request_microseconds, bool) and request_microseconds > 0:
        limits.append(request_microseconds / 1e6)
    return min(limits) if limits else None
