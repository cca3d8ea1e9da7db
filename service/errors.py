"""The one exception type the service raises on purpose; it becomes {"error": message} with its status."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError


class ServiceError(Exception):
    """A request the server refuses: 400 client mistake, 404 unknown model, 413 too large, 503 busy."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


def first_error(error: ValidationError | RequestValidationError) -> str:
    """The first of pydantic's errors as `where: what`, the one line a client needs to fix its body."""
    errors = error.errors()
    if not errors:
        return "invalid value"
    where = ".".join(str(part) for part in errors[0]["loc"])
    message = str(errors[0]["msg"])
    return f"{where}: {message}" if where else message
