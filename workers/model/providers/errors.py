"""Classify provider failures from structured facts (HTTP status, exception type), never message text."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import aiohttp
import msgspec

from schemas.status import ErrorCategory, ErrorInfo, ErrorType
from workers.model.providers.base import ProviderError

__all__ = (
    "UpstreamResponse",
    "classify_status",
    "classify_transport",
    "client_status",
    "transport_error",
    "upstream_error",
    "upstream_message",
)

_BY_STATUS = {
    401: ErrorType.AUTH,
    403: ErrorType.AUTH,
    404: ErrorType.NOT_FOUND,
    408: ErrorType.TIMEOUT,
    429: ErrorType.RATE_LIMIT,
    504: ErrorType.TIMEOUT,
}
TransportFailure = aiohttp.ClientError | asyncio.TimeoutError


class _UpstreamError(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None
    param: str | None = None


class _UpstreamErrorBody(msgspec.Struct):
    error: _UpstreamError | str | None = None


class UpstreamResponse(msgspec.Struct, frozen=True):
    """The facts of a failed upstream response that classification looks at."""

    status: int
    body: bytes


def classify_status(status: int) -> ErrorInfo:
    if status in _BY_STATUS:
        type_ = _BY_STATUS[status]
    elif 400 <= status < 500:
        type_ = ErrorType.VALIDATION
    elif status >= 500:
        type_ = ErrorType.INTERNAL
    else:
        type_ = ErrorType.UNKNOWN
    return ErrorInfo.of(ErrorCategory.MODEL, type_)


def classify_transport(exc: TransportFailure) -> ErrorInfo:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return ErrorInfo.of(ErrorCategory.MODEL, ErrorType.TIMEOUT)
    return ErrorInfo.of(ErrorCategory.MODEL, ErrorType.CONNECTION)


def _error_of(response: UpstreamResponse) -> _UpstreamError | str | None:
    try:
        return msgspec.json.decode(response.body, type=_UpstreamErrorBody).error
    except msgspec.DecodeError:
        return None


def upstream_message(response: UpstreamResponse, secret: str | None = None) -> str:
    """The provider's own error message (OpenAI's ``{"error": {"message"}}``), else the status line.

    Some providers echo the API key they were sent in the message: ``secret`` (the key) is masked out, as the
    message ends up in logs, in the model's status and in the client's error.
    """
    error = _error_of(response)
    detail = error.message if isinstance(error, _UpstreamError) else error
    if detail and secret:
        detail = detail.replace(secret, "***")
    try:
        reason = f"{response.status} {HTTPStatus(response.status).phrase}"
    except ValueError:
        reason = str(response.status)
    return f"{reason}: {detail}" if detail else reason


def client_status(upstream_status: int) -> int:
    """What the client gets for an upstream failure: 401 and 429 as they are, other 4xx 400, 5xx 502."""
    if upstream_status in (401, 429):
        return upstream_status
    return 400 if 400 <= upstream_status < 500 else 502


def upstream_error(response: UpstreamResponse, secret: str | None = None) -> ProviderError:
    error = _error_of(response)
    detail = error if isinstance(error, _UpstreamError) else _UpstreamError()
    status = response.status
    return ProviderError(
        client_status(status),
        f"upstream error: {upstream_message(response, secret)}",
        type_=detail.type or ("invalid_request_error" if status < 500 else "server_error"),
        code=None if detail.code is None else str(detail.code),
        param=detail.param,
        unhealthy=classify_status(status) if status in (401, 403) else None,
    )


def transport_error(exc: TransportFailure, endpoint: str) -> ProviderError:
    if classify_transport(exc).type is ErrorType.TIMEOUT:
        return ProviderError(504, f"the upstream model at {endpoint} did not answer in time", code="timeout")
    return ProviderError(502, f"cannot reach the upstream model at {endpoint}: {type(exc).__name__}")
