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


# How much of a name, key or shape a client sent an error message quotes: enough to recognise it,
# never so much that the message outgrows what a client or gRPC's metadata accepts.
QUOTE_LIMIT = 64


def quoted(value: object) -> str:
    """`value` as an error message quotes it: a string in repr form, anything else (a shape) as
    str, cut to its first QUOTE_LIMIT characters with the full length said."""
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= QUOTE_LIMIT:
        return text
    return f"{text[:QUOTE_LIMIT]}… ({len(text)} characters)"


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
