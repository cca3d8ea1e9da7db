"""Liveness, readiness and server metadata."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from service import SERVER_NAME, __version__
from service.auth import require_scoped_key
from service.errors import ServiceError
from service.schemas import ErrorResponse, ServerMetadata, StatisticsResponse, empty_ok

router = APIRouter(tags=["health"])
# Health checks stay open for probes; the rest asks for the key under --api-key-scope all.
SCOPED = {"dependencies": [Depends(require_scoped_key)], "responses": {401: {"model": ErrorResponse}}}

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


@router.get("/v2/health/live", summary="The process answers", **empty_ok("live"))
async def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/v2/health/ready",
    summary="Start-up loading has finished and the server is not stopping",
    **empty_ok("ready; 503 while starting or stopping"),
)
async def ready(request: Request) -> Response:
    if not request.app.state.service.ready:
        raise ServiceError(503, "server is not ready")
    return Response(status_code=200)


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata", **SCOPED)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@router.get(
    "/v2/models/stats",
    response_model=StatisticsResponse,
    summary="Inference statistics of every loaded model version",
    **SCOPED,
)
async def all_stats(request: Request) -> dict:
    repository = request.app.state.service.repository
    return {"model_stats": [model.stats.to_dict(model.name, model.version) for model in repository.loaded()]}
