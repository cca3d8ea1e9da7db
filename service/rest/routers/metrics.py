"""Prometheus metrics in the text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.rest.routers.dependencies import Plane, require_scoped_key
from service.rest.schemas import ErrorResponse

router = APIRouter(
    tags=["metrics"], dependencies=[Depends(require_scoped_key)], responses={401: {"model": ErrorResponse}}
)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics(plane: Plane) -> Response:
    return Response(generate_latest(plane.recorder.registry), media_type=CONTENT_TYPE_LATEST)
