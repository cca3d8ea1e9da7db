"""Prometheus metrics in the text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.routers.dependencies import Plane

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(plane: Plane) -> Response:
    return Response(generate_latest(plane.recorder.registry), media_type=CONTENT_TYPE_LATEST)
