"""Liveness, readiness and server metadata."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service import SERVER_NAME, __version__
from service.errors import ServiceError
from service.schemas import ServerMetadata

router = APIRouter(tags=["health"])

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


@router.get("/v2/health/live", summary="The process answers")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Start-up loading has finished and the server is not stopping")
async def ready(request: Request) -> Response:
    if not request.app.state.service.ready:
        raise ServiceError(503, "server is not ready")
    return Response(status_code=200)


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@router.get("/v2/models/stats", summary="Inference statistics of every loaded model version")
async def all_stats(request: Request) -> dict:
    repository = request.app.state.service.repository
    return {"model_stats": [model.stats.to_dict(model.name, model.version) for model in repository.loaded()]}
