"""The typed FastAPI dependencies that routers share: the data plane, and the API key guards."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.dataplane import DataPlane

API_KEY_HEADER = "X-API-Key"


def data_plane(request: Request) -> DataPlane:
    return request.app.state.data_plane


Plane = Annotated[DataPlane, Depends(data_plane)]


def api_key(request: Request) -> str | None:
    """The key a request carries, from X-API-Key or `Authorization: Bearer <key>`."""
    given = request.headers.get(API_KEY_HEADER)
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given


def require_api_key(plane: Plane, key: Annotated[str | None, Depends(api_key)]) -> None:
    plane.authorize(key)


def require_scoped_key(plane: Plane, key: Annotated[str | None, Depends(api_key)]) -> None:
    plane.authorize_scoped(key)
