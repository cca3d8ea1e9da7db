"""The API key: required on the repository API always, and on inference and metadata too with `--api-key-scope all`."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import ServiceError

API_KEY_HEADER = "X-API-Key"


def _check_key(request: Request, expected: str) -> None:
    """401 for a missing or wrong key, taken from X-API-Key or `Authorization: Bearer <key>`."""
    given = request.headers.get(API_KEY_HEADER)
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServiceError(401, f"missing or wrong API key (send it as {API_KEY_HEADER} or Authorization: Bearer)")


def require_repository_key(request: Request) -> None:
    """403 while no key is configured (the repository API is off), else the key must be given."""
    expected = request.app.state.service.config.api_key
    if not expected:
        raise ServiceError(403, "the repository API is disabled; start the server with an API key (SE_ONNX_API_KEY, --api-key-file or --api-key) to enable it")
    _check_key(request, expected)


def require_scoped_key(request: Request) -> None:
    """The key on inference, metadata, statistics and metrics when the scope is `all`; health
    checks stay open so that probes need no secret."""
    config = request.app.state.service.config
    if config.api_key and config.api_key_scope == "all":
        _check_key(request, config.api_key)
