"""The model repository extension: index, load, unload; only with an API key configured and given."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from service.rest.routers.dependencies import Plane, json_body, require_api_key
from service.rest.schemas import (
    ErrorResponse,
    LoadRequest,
    RepositoryIndexRequest,
    RepositoryModel,
    UnloadRequest,
    empty_ok,
    openapi_body,
)

router = APIRouter(
    prefix="/v2/repository",
    tags=["repository"],
    dependencies=[Depends(require_api_key)],
    responses={code: {"model": ErrorResponse} for code in (401, 403)},
)


@router.post(
    "/index",
    response_model=list[RepositoryModel],
    summary="Every model in the repository and its state",
    openapi_extra=openapi_body(RepositoryIndexRequest, "optional; `ready: true` lists ready models only"),
)
async def index(request: Request, plane: Plane) -> list[RepositoryModel]:
    body = await json_body(request, RepositoryIndexRequest)
    return [RepositoryModel(**row) for row in plane.repository_index(body.ready)]


@router.post(
    "/models/{model_name}/load",
    summary="Load or reload a model",
    **empty_ok("loaded"),
    openapi_extra=openapi_body(
        LoadRequest,
        "optional; parameters.config: config.json text that replaces the model's own; "
        "file: parameters are refused (400)",
    ),
)
async def load(request: Request, model_name: str, plane: Plane) -> Response:
    body = await json_body(request, LoadRequest)
    await plane.load(model_name, body.parameters)
    return Response(status_code=200)


@router.post(
    "/models/{model_name}/unload",
    summary="Unload a model once its in-flight requests finish",
    **empty_ok("unloaded"),
    openapi_extra=openapi_body(UnloadRequest, "optional"),
)
async def unload(request: Request, model_name: str, plane: Plane) -> Response:
    await json_body(request, UnloadRequest)
    await plane.unload(model_name)
    return Response(status_code=200)
