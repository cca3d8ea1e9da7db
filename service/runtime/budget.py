"""The byte budget that HTTP and gRPC share: how many bytes of requests the server holds at once."""

from __future__ import annotations

from service.errors import ServiceError


class OverBudget(ServiceError):
    """A request refused because the server holds too many bytes of requests already (503; gRPC
    says RESOURCE_EXHAUSTED)."""


class ByteBudget:
    """Bytes of requests held at once, across both front ends, up to `limit`. A front end takes
    a request's bytes as they arrive and gives them back once the request is answered; a request
    that does not fit is refused at once (503) rather than queued, so that its bytes are never
    held and a client can retry elsewhere. Used on the event loop only, so it needs no lock."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        """Hold `size` more bytes, or raise ServiceError(503) when they do not fit."""
        if self.held + size > self.limit:
            raise OverBudget(
                503,
                f"the server holds {self.held} bytes of requests; {size} more would pass its limit of "
                f"{self.limit} bytes (--max-inflight-bytes); retry later",
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
