"""The one exception type the service raises on purpose; it becomes {"error": message} with its status."""

from __future__ import annotations

from pydantic import ValidationError


class ServiceError(Exception):
    """A request the server refuses: 400 client mistake, 404 unknown model, 413 too large, 503 busy."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


def first_error(error: ValidationError) -> str:
    """The first of pydantic's errors as `where: what`, the one line a client needs to fix its body."""
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid value"}
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]
