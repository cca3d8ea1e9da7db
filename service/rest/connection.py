"""HTTP connections: uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.

uvicorn closes idle keep-alive connections, but a connection that sends its headers a byte at a
time (slowloris), or opens and sends nothing, is held for ever: every byte cancels the keep-alive
timer, and nothing times the headers. This protocol starts a timer when a connection opens and
when the first byte of its next request arrives, and stops it once uvicorn has parsed the
request's headers (a new request cycle exists). Body deadlines are the ASGI middleware's
(`service.rest.middleware.BodyLimit`), which can still answer 408 through the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("service.rest")


class _HeaderDeadline:
    """A mixin over uvicorn's httptools or h11 protocol, both of which keep the request being
    served in `self.cycle` (None before the first) and set `cycle.response_complete`."""

    header_timeout: float
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    _header_timer: asyncio.TimerHandle | None = None
    _timed_cycle: Any = None  # the cycle that was current when the timer started

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._start_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not self._timed_cycle:  # a request's headers are in: uvicorn made its cycle
            self._stop_timer()
            self._timed_cycle = self.cycle
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._start_timer()  # bytes between requests: the next request has begun

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _start_timer(self) -> None:
        self._timed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        log.info("request headers timed out", extra={"client": client, "timeout_s": self.header_timeout})
        # No response is in progress (the timer runs only between requests), so 408 may go first.
        body = json.dumps({"error": f"request headers not received within {self.header_timeout:g} s"}).encode()
        head = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        self.transport.write(head + body)
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools where installed, else h11, as uvicorn's "auto"
    chooses) with a `seconds` deadline for each request's headers; pass it as uvicorn.Config(http=)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol  # only the server process needs uvicorn

    return type("HeaderTimeoutProtocol", (_HeaderDeadline, AutoHTTPProtocol), {"header_timeout": seconds})
