"""Liveness, readiness and server metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from service.errors import ServiceError
from service.rest.routers.dependencies import Plane, require_scoped_key
from service.rest.schemas import (
    ErrorResponse,
    ServerMetadata,
    StatisticsResponse,
    empty_ok,
)

router = APIRouter(tags=["health"])
# Health checks stay open for probes; the rest asks for the key under --api-key-scope all.
SCOPED: dict[str, Any] = {"dependencies": [Depends(require_scoped_key)], "responses": {401: {"model": ErrorResponse}}}


@router.get("/v2/health/live", summary="The process answers", **empty_ok("live"))
async def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/v2/health/ready",
    summary="Start-up loading has finished and the server is not stopping",
    **empty_ok("ready; 503 while starting or stopping"),
)
async def ready(plane: Plane) -> Response:
    if not plane.ready:
        raise ServiceError(503, "server is not ready")
    return Response(status_code=200)


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata", **SCOPED)
async def server_metadata(plane: Plane) -> ServerMetadata:
    return ServerMetadata(**plane.server_metadata())


@router.get(
    "/v2/models/stats",
    response_model=StatisticsResponse,
    summary="Inference statistics of every loaded model version",
    **SCOPED,
)
async def all_stats(plane: Plane) -> dict:
    return {"model_stats": plane.statistics()}
