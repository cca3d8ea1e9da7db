"""The typed FastAPI dependencies that routers share: the data plane, and the API key guards."""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from service.dataplane import DataPlane, api_key_from
from service.errors import bad_request, first_error

T = TypeVar("T", bound=BaseModel)


# Dependencies are coroutines: FastAPI runs a plain function in a worker thread, a hop that cost
# about a third of a small request's time on the event loop.
async def data_plane(request: Request) -> DataPlane:
    return request.app.state.data_plane


Plane = Annotated[DataPlane, Depends(data_plane)]


async def api_key(request: Request) -> str | None:
    """The key a request carries, from X-API-Key or `Authorization: Bearer <key>`."""
    return api_key_from(request.headers)


async def require_api_key(plane: Plane, key: Annotated[str | None, Depends(api_key)]) -> None:
    plane.authorize(key)


async def require_scoped_key(plane: Plane, key: Annotated[str | None, Depends(api_key)]) -> None:
    plane.authorize_scoped(key)


async def json_body(request: Request, schema: type[T]) -> T:
    """The body as `schema` (its defaults when empty), whatever its Content-Type: tritonclient sends none;
    400 otherwise."""
    raw = await request.body()
    try:
        # An empty body is an empty object (optional bodies; required fields still say so); whitespace alone
        # is not JSON.
        return schema.model_validate(orjson.loads(raw) if raw else {})
    except orjson.JSONDecodeError as error:  # not JSON, not UTF-8, or nested past orjson's depth limit
        raise bad_request(f"invalid request body: {error}") from None
    except ValidationError as error:
        raise bad_request(f"invalid request body: {first_error(error)}") from None
