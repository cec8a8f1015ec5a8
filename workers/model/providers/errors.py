"""Classify provider failures from structured facts (HTTP status, exception type), never message text."""

from __future__ import annotations

import httpx
import msgspec

from schemas.status import ErrorCategory, ErrorInfo, ErrorType
from workers.model.providers.base import ProviderError

__all__ = ("classify_status", "classify_transport", "client_status", "upstream_error", "upstream_message")

_BY_STATUS = {
    401: ErrorType.AUTH,
    403: ErrorType.AUTH,
    404: ErrorType.NOT_FOUND,
    408: ErrorType.TIMEOUT,
    429: ErrorType.RATE_LIMIT,
    504: ErrorType.TIMEOUT,
}


class _UpstreamError(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | None = None
    param: str | None = None


class _UpstreamErrorBody(msgspec.Struct):
    error: _UpstreamError | str | None = None


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


def classify_transport(exc: httpx.TransportError) -> ErrorInfo:
    if isinstance(exc, httpx.TimeoutException):
        return ErrorInfo.of(ErrorCategory.MODEL, ErrorType.TIMEOUT)
    return ErrorInfo.of(ErrorCategory.MODEL, ErrorType.CONNECTION)


def upstream_message(response: httpx.Response) -> str:
    """The provider's own error message (OpenAI's ``{"error": {"message"}}``), else the status line."""
    try:
        body = msgspec.json.decode(response.content, type=_UpstreamErrorBody)
    except msgspec.DecodeError:
        body = _UpstreamErrorBody()
    detail = body.error.message if isinstance(body.error, _UpstreamError) else body.error
    reason = f"{response.status_code} {response.reason_phrase}".strip()
    return f"{reason}: {detail}" if detail else reason


def client_status(upstream_status: int) -> int:
    """What the client gets for an upstream failure: 401 and 429 as they are, other 4xx 400, 5xx 502."""
    if upstream_status in (401, 429):
        return upstream_status
    return 400 if 400 <= upstream_status < 500 else 502


def upstream_error(response: httpx.Response) -> ProviderError:
    try:
        body = msgspec.json.decode(response.content, type=_UpstreamErrorBody)
    except msgspec.DecodeError:
        body = _UpstreamErrorBody()
    error = body.error if isinstance(body.error, _UpstreamError) else _UpstreamError()
    return ProviderError(
        client_status(response.status_code),
        f"upstream error: {upstream_message(response)}",
        type_=error.type or ("invalid_request_error" if response.status_code < 500 else "server_error"),
        code=error.code,
        param=error.param,
    )
