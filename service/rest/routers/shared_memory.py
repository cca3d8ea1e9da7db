"""Triton's shared-memory extension: register, unregister and status of system shared memory regions;
CUDA shared memory refused."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.errors import ServiceError
from service.rest.routers.dependencies import Plane, api_key, json_body
from service.rest.schemas import (
    SharedMemoryRegisterRequest,
    SharedMemoryStatus,
    openapi_body,
)


async def require_key_if_set(plane: Plane, key: Annotated[str | None, Depends(api_key)]) -> None:
    plane.authorize_shared_memory(key)


router = APIRouter(prefix="/v2/systemsharedmemory", tags=["shared memory"], dependencies=[Depends(require_key_if_set)])


@router.get("/status", response_model=list[SharedMemoryStatus], summary="Every registered system shared memory region")
async def status_all(plane: Plane) -> list[dict]:
    return plane.shared_memory.status()


@router.get("/region/{region_name}/status", response_model=list[SharedMemoryStatus], summary="One registered region")
async def status(region_name: str, plane: Plane) -> list[dict]:
    return plane.shared_memory.status(region_name)


@router.post(
    "/region/{region_name}/register",
    summary="Register a region of a POSIX shm object (its shm_open key)",
    openapi_extra=openapi_body(
        SharedMemoryRegisterRequest, "the object's key, and the region's offset and size within it"
    ),
)
async def register(region_name: str, request: Request, plane: Plane) -> dict:
    body = await json_body(request, SharedMemoryRegisterRequest)
    plane.shared_memory.register(region_name, body.key, body.offset, body.byte_size)
    return {}


@router.post("/unregister", summary="Unregister every region")
async def unregister_all(plane: Plane) -> dict:
    plane.shared_memory.unregister()
    return {}


@router.post("/region/{region_name}/unregister", summary="Unregister one region (no error when it is not registered)")
async def unregister(region_name: str, plane: Plane) -> dict:
    plane.shared_memory.unregister(region_name)
    return {}


# Refusals of an extension not offered: left out of the OpenAPI document, which lists what the server serves.
cuda_router = APIRouter(prefix="/v2/cudasharedmemory", tags=["shared memory"], include_in_schema=False)


async def cuda_shared_memory() -> None:
    raise ServiceError(501, "CUDA shared memory is not supported by this server; use system shared memory")


for _method, _path in (
    ("GET", "/status"),
    ("GET", "/region/{region_name}/status"),
    ("POST", "/region/{region_name}/register"),
    ("POST", "/unregister"),
    ("POST", "/region/{region_name}/unregister"),
):
    cuda_router.add_api_route(
        _path,
        cuda_shared_memory,
        methods=[_method],
        status_code=501,
        summary="CUDA shared memory: not supported by this server",
        operation_id=f"cuda_shared_memory{_path.replace('/', '_').replace('{region_name}', 'region')}",
    )
