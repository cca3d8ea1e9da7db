"""The one exception type the service raises on purpose; it becomes {"error": message} with its status."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the server refuses: 400 client mistake, 404 unknown model, 413 too large, 503 busy."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)
