"""The model repository extension: index, load, unload; only with an API key configured and given."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ValidationError

from service.errors import bad_request, first_error
from service.routers.dependencies import Plane, require_api_key
from service.schemas import ErrorResponse, LoadRequest, RepositoryIndexRequest, RepositoryModel, UnloadRequest, empty_ok, openapi_body

T = TypeVar("T", bound=BaseModel)

router = APIRouter(
    prefix="/v2/repository",
    tags=["repository"],
    dependencies=[Depends(require_api_key)],
    responses={code: {"model": ErrorResponse} for code in (401, 403)},
)


async def _body(request: Request, schema: type[T]) -> T:
    raw = await request.body()
    if not raw:  # the body is optional; whitespace alone is not JSON
        return schema()
    try:
        return schema.model_validate(json.loads(raw))
    except RecursionError:
        raise bad_request("invalid request body: JSON nested too deeply") from None
    except ValidationError as error:
        raise bad_request(f"invalid request body: {first_error(error)}") from None
    except ValueError as error:  # not JSON, or not UTF-8
        raise bad_request(f"invalid request body: {' '.join(str(error).split())}") from None


@router.post(
    "/index",
    response_model=list[RepositoryModel],
    summary="Every model in the repository and its state",
    openapi_extra=openapi_body(RepositoryIndexRequest, "optional; `ready: true` lists ready models only"),
)
async def index(request: Request, plane: Plane) -> list[RepositoryModel]:
    body = await _body(request, RepositoryIndexRequest)
    return [RepositoryModel(**row) for row in plane.repository_index(body.ready)]


@router.post(
    "/models/{model_name}/load",
    summary="Load or reload a model",
    **empty_ok("loaded"),
    openapi_extra=openapi_body(LoadRequest, "optional; parameters.config: config.json text that replaces the model's own"),
)
async def load(request: Request, model_name: str, plane: Plane) -> Response:
    body = await _body(request, LoadRequest)
    override = body.parameters.get("config")
    if override is not None and not isinstance(override, str):
        raise bad_request("parameter 'config' must be a string holding the model's JSON config")
    await plane.load(model_name, override)
    return Response(status_code=200)


@router.post(
    "/models/{model_name}/unload",
    summary="Unload a model once its in-flight requests finish",
    **empty_ok("unloaded"),
    openapi_extra=openapi_body(UnloadRequest, "optional"),
)
async def unload(request: Request, model_name: str, plane: Plane) -> Response:
    await _body(request, UnloadRequest)
    await plane.unload(model_name)
    return Response(status_code=200)
