"""ASGI middleware: request bodies (size limit, read deadline, the shared byte budget), response
compression and access logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError
from service.runtime.budget import ByteBudget

access_log = logging.getLogger("service.access")
log = logging.getLogger("service.rest")


class _BodyTooSlow(Exception):
    """A body that missed its deadline; raised from `receive`, answered by BodyLimit."""


class BodyLimit:
    """What a request body may cost. 413 past `limit` bytes: at once when Content-Length says
    so, else as soon as the body streamed so far passes it (the endpoint's body read raises, the
    error handler answers). Each chunk's bytes are taken from `budget` as they arrive (503 when
    they do not fit) and given back when the request ends. The body must arrive within
    `timeout` seconds, one more for every `min_rate` bytes received; past that 408 and the
    connection is closed."""

    def __init__(self, app: ASGIApp, limit: int, budget: ByteBudget, timeout: float, min_rate: int) -> None:
        self.app = app
        self.limit = limit
        self.budget = budget
        self.timeout = timeout
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.limit
            except ValueError:
                return await _error(send, 400, "Content-Length is not an integer")
            if too_large:
                return await _error(send, 413, self._message(int(declared)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        received, held, complete = 0, 0, False

        async def limited_receive():
            nonlocal received, held, complete
            if complete:  # after the body only the disconnect is left, and it has no deadline
                return await receive()
            deadline = started + self.timeout + received / self.min_rate
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                raise _BodyTooSlow(received) from None
            if message["type"] != "http.request":
                complete = True
                return message
            size = len(message.get("body", b""))
            received += size
            if received > self.limit:
                raise ServiceError(413, self._message(received))
            self.budget.take(size)
            held += size
            complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooSlow:
            # Raised inside the endpoint's body read, before any response: the app's error
            # handlers do not know the exception, so it comes back here to be answered.
            client = scope.get("client")
            log.info(
                "request body timed out",
                extra={
                    "path": scope["path"],
                    "received": received,
                    "client": f"{client[0]}:{client[1]}" if client else None,
                },
            )
            await _error(
                send, 408, f"request body not received in time ({received} bytes in {loop.time() - started:.3g} s)"
            )
        finally:
            self.budget.give(held)

    def _message(self, size: int) -> str:
        return f"request body of {size} bytes or more is larger than the limit of {self.limit} bytes"


async def _error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """One JSON line per request: method, path, status, response bytes, duration, client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Below --log-level info nothing is logged, so the response need not be watched either.
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, sent = 500, 0

        async def recording_send(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            client = scope.get("client")
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "bytes": sent,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                },
            )


# Encodings clients may ask for in Accept-Encoding, by preference, and zlib's window bits for each:
# HTTP's "deflate" is the zlib format (RFC 9110), as tritonclient sends and expects it.
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Work on a body this large (compressing it, parsing its JSON) costs less in a thread than the stall
# it would cause on the event loop, where other requests wait for their bodies and results meanwhile.
THREAD_MIN_BYTES = 256 * 1024


def accepted_encoding(header: str) -> str | None:
    """gzip or deflate when Accept-Encoding allows it (q > 0), gzip first; else None."""
    allowed = {}
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        quality = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
        allowed[coding.strip().lower()] = quality
    return next((coding for coding in _ENCODINGS if allowed.get(coding, allowed.get("*", 0)) > 0), None)


class Compression:
    """Compresses responses of `minimum_size` bytes or more with gzip or deflate, as the client's
    Accept-Encoding asks. The whole body is compressed, binary tensors included; headers such as
    Inference-Header-Content-Length keep describing the uncompressed body, as Triton does.
    (Starlette's GZipMiddleware offers gzip only.)"""

    def __init__(self, app: ASGIApp, minimum_size: int) -> None:
        self.app = app
        self.minimum_size = minimum_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        encoding = accepted_encoding(dict(scope["headers"]).get(b"accept-encoding", b"").decode("latin-1"))
        if encoding is None:
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def compressing_send(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            headers = [(key, value) for key, value in start.get("headers", []) if key.lower() != b"content-length"]
            if len(body) >= self.minimum_size and not any(key.lower() == b"content-encoding" for key, _ in headers):
                body = await _compress(body, encoding)
                headers += [(b"content-encoding", encoding.encode()), (b"vary", b"Accept-Encoding")]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, compressing_send)


async def _compress(body: bytes, encoding: str) -> bytes:
    def compress() -> bytes:
        compressor = zlib.compressobj(6, zlib.DEFLATED, _ENCODINGS[encoding])
        return compressor.compress(body) + compressor.flush()

    return await asyncio.to_thread(compress) if len(body) >= THREAD_MIN_BYTES else compress()
