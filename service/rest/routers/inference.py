"""Model metadata, model readiness and inference (JSON and binary tensor data)."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable

from fastapi import APIRouter, Depends, Request, Response
from starlette.requests import ClientDisconnect

from service.dataplane import InferenceRequest, InferenceResult
from service.errors import ServiceError, bad_request, quoted
from service.rest.codec import (
    HEADER_LENGTH,
    binary_outputs,
    encode_response,
    parse_request,
)
from service.rest.middleware import THREAD_MIN_BYTES
from service.rest.routers.dependencies import Plane, require_scoped_key
from service.rest.schemas import (
    ErrorResponse,
    InferRequest,
    InferResponse,
    ModelMetadata,
    StatisticsResponse,
    empty_ok,
    openapi_body,
)
from service.rest.tracing import traced

router = APIRouter(
    prefix="/v2/models/{model_name}",
    tags=["models"],
    dependencies=[Depends(require_scoped_key)],
    responses={401: {"model": ErrorResponse}},
)


def _add(method: str, route: str, **kwargs):
    """Register `handler(request, plane, model_name, version)` for …/versions/{version}<route>
    and, with version None (the newest), for <route>."""

    def register(handler):
        async def newest(request: Request, plane: Plane, model_name: str):
            return await handler(request, plane, model_name, None)

        newest.__name__ = f"{handler.__name__}_newest"
        router.add_api_route(route, newest, methods=[method], **kwargs)
        router.add_api_route("/versions/{version}" + route, handler, methods=[method], **kwargs)
        return handler

    return register


@_add("GET", "", response_model=ModelMetadata, summary="Model metadata")
async def model_metadata(request: Request, plane: Plane, model_name: str, version: str | None) -> dict:
    return plane.model_metadata(model_name, version)


@_add("GET", "/config", summary="Model configuration in Triton's form (max_batch_size, dims without the batch axis)")
async def model_config(request: Request, plane: Plane, model_name: str, version: str | None) -> dict:
    return plane.model_config(model_name, version)


@_add(
    "GET",
    "/stats",
    response_model=StatisticsResponse,
    summary="Inference statistics of the model's versions (Triton's statistics extension)",
)
async def model_stats(request: Request, plane: Plane, model_name: str, version: str | None) -> dict:
    return {"model_stats": plane.statistics(model_name, version)}


@_add("GET", "/ready", summary="200 when the model (version) is ready", **empty_ok("ready"))
async def model_ready(request: Request, plane: Plane, model_name: str, version: str | None) -> Response:
    plane.model(model_name, version)
    return Response(status_code=200)


@_add(
    "POST",
    "/infer",
    summary="Run the model",
    response_model=InferResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": f"JSON, or with binary outputs a JSON header of {HEADER_LENGTH} bytes and then the tensors",
        }
    },
    openapi_extra=openapi_body(
        InferRequest,
        f"JSON, or a JSON header of {HEADER_LENGTH} bytes followed by binary tensors "
        f"({HEADER_LENGTH}: 0 = the raw bytes of a single-input model's input)",
        binary=True,
    ),
)
@traced
async def infer(request: Request, plane: Plane, model_name: str, version: str | None) -> Response:
    # Read the body ourselves (not via a pydantic parameter): the size limit applies while it
    # streams, and binary tensors follow the JSON header in the same body.
    try:
        body = await request.body()
    except ClientDisconnect:  # gone mid-upload: counted as gone like one that leaves while queued
        with contextlib.suppress(ServiceError):  # an unknown model has no counter
            plane.model(model_name, version).recorder.client_gone()
        raise
    body = _decompress(body, request.headers.get("content-encoding"), plane.config.max_request_size)
    header_length = request.headers.get(HEADER_LENGTH)
    binary: dict[str, bool] = {}  # output name → sent as binary data; filled by decode

    def decode(model) -> InferenceRequest:
        infer_request, feeds = parse_request(body, header_length, model.inputs, plane.shared_memory)
        binary.update(binary_outputs(infer_request, list(model.outputs)))
        outputs = None if infer_request.outputs is None else {o.name: o.parameters for o in infer_request.outputs}
        return InferenceRequest(feeds, outputs, infer_request.id, infer_request.parameters)

    def encode(result: InferenceResult) -> Response:
        header = {"model_name": result.model.name, "model_version": result.model.version}
        if result.request.id is not None:
            header["id"] = result.request.id
        content, json_size = encode_response(header, result.outputs, binary, result.in_shared_memory)
        if json_size is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_size)})

    # A JSON body's numbers become Python objects and then an array, milliseconds per megabyte:
    # a thread does it while the event loop goes on reading the other requests and sending results.
    in_thread = header_length is None and len(body) >= THREAD_MIN_BYTES
    return await _unless_client_gone(request, plane.infer(model_name, version, decode, encode, in_thread))


async def _unless_client_gone(request: Request, call: Awaitable[Response]) -> Response:
    """`call`'s response, or its cancellation once the client disconnects: a request still
    waiting for a batch or an instance is then dropped instead of computed for nobody."""
    work = asyncio.ensure_future(call)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        return Response(status_code=499)  # nobody reads it; the access log shows what happened
    return work.result()


async def _disconnected(request: Request) -> None:
    # The body has been read: the next message the server has for this request is its disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent with tritonclient's request compression (gzip or deflate), never more
    than `limit` bytes once inflated."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise bad_request(f"unsupported Content-Encoding {quoted(encoding)}; use gzip, deflate or none")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise bad_request(f"body is not valid {encoding} data: {error}") from None
    if len(inflated) > limit:
        raise ServiceError(413, f"request body inflates past the limit of {limit} bytes")
    return inflated
