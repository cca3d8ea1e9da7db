"""Liveness, readiness and server metadata."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.errors import ServiceError
from service.routers.dependencies import Plane
from service.schemas import ServerMetadata

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="The process answers")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Start-up loading has finished and the server is not stopping")
async def ready(plane: Plane) -> Response:
    if not plane.ready:
        raise ServiceError(503, "server is not ready")
    return Response(status_code=200)


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata(plane: Plane) -> ServerMetadata:
    return ServerMetadata(**plane.server_metadata())


@router.get("/v2/models/stats", summary="Inference statistics of every loaded model version")
async def all_stats(plane: Plane) -> dict:
    return {"model_stats": plane.statistics()}
