"""Classify provider failures from structured facts (HTTP status, exception type, the error object's
``type`` and ``code`` fields), never message text.

Upstreams answer a failure with ``{"error": {...}}`` in one of two real wire formats: OpenAI's
(``type``, ``code`` a string or null, ``param``) and llama.cpp's llama-server (``format_error_response``:
its own ``type`` names, ``code`` the HTTP status as an integer, and for a context overflow
``n_prompt_tokens`` and ``n_ctx``). A client of modelbus gets OpenAI's shape either way, with the upstream's
message (which says the sizes, the feature, ...) kept after what modelbus makes of it. An integer ``code``
is never passed on as OpenAI's ``code``. What the client gets, and what the model's status becomes, is a
table in ``docs/errors.md``, computed from these functions (``python -m modelbus.cli.reference``). In short:

- a context overflow (OpenAI's ``code``, llama-server's ``exceed_context_size_error``) is a 400
  ``context_length_exceeded``, ``param`` the upstream's else ``messages``: the client's to fix, and asking
  again cannot help;
- llama-server's 503 ``unavailable_error`` (still loading) turns the model ``error`` (``model.loading``) and
  it is checked again until it answers, so the next requests wait in its queue instead of failing;
- a 401 or 403 says the model worker's own credentials were refused: the model turns ``error``
  (``model.auth``) and is checked again;
- 401 and 429 pass through as they are, any other 4xx is a 400 and a 5xx a 502, with the upstream's
  ``type`` (else ``invalid_request_error`` / ``server_error``) and string ``code``.

The same applies to an error sent inside a 200 stream (llama-server's ``data: {"error": {...}}`` after the
first chunk, or the ``error: {...}`` event of older builds): see :func:`stream_error`.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import aiohttp
import msgspec

from modelbus.schemas.chat import CONTEXT_LENGTH_EXCEEDED
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType
from modelbus.workers.model.providers.base import ProviderError

__all__ = (
    "UpstreamResponse",
    "classify_response",
    "classify_status",
    "classify_transport",
    "client_status",
    "stream_error",
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
_INVALID = "invalid_request_error"
_SERVER = "server_error"


class _Mapped(msgspec.Struct, frozen=True):
    """What the client gets for an upstream error recognised by its ``type`` or ``code``."""

    status: int
    type: str
    code: str
    what: str  # what modelbus makes of it, ahead of the upstream's own message
    unhealthy: ErrorInfo | None = None


_CONTEXT = _Mapped(400, _INVALID, CONTEXT_LENGTH_EXCEEDED, "the messages do not fit in the model's context")
_UPSTREAM = "upstream error"
# llama-server's error types (format_error_response) that OpenAI's format has no equivalent for
_BY_TYPE = {
    "exceed_context_size_error": _CONTEXT,
    "not_supported_error": _Mapped(
        400, _INVALID, "unsupported_feature", "the model's server does not support what the request asks for"
    ),
    "unavailable_error": _Mapped(
        503,
        _SERVER,
        "model_not_ready",
        "the model is not ready (its server is still loading it)",
        ErrorInfo.of(ErrorCategory.MODEL, ErrorType.LOADING),
    ),
    "authentication_error": _Mapped(401, _INVALID, "invalid_api_key", _UPSTREAM),
    "permission_error": _Mapped(400, _INVALID, "permission_denied", _UPSTREAM),
    "not_found_error": _Mapped(400, _INVALID, "not_found", _UPSTREAM),
}


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


_error_decoder = msgspec.json.Decoder(_UpstreamError | str)


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


def classify_response(response: UpstreamResponse) -> ErrorInfo:
    """Why a readiness check failed: by status, except llama-server's ``unavailable_error`` (loading)."""
    mapped = _mapped(_error_of(response), response.status)
    if mapped is not None and mapped.unhealthy is not None:
        return mapped.unhealthy
    return classify_status(response.status)


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


def _mapped(error: _UpstreamError | str | None, status: int) -> _Mapped | None:
    if not isinstance(error, _UpstreamError):
        return None
    if error.code == CONTEXT_LENGTH_EXCEEDED and 400 <= status < 500:
        return _CONTEXT
    return _BY_TYPE.get(error.type or "")


def upstream_error(response: UpstreamResponse, secret: str | None = None) -> ProviderError:
    """The client's error for a failed upstream response (the table in the module docstring)."""
    error = _error_of(response)
    detail = error if isinstance(error, _UpstreamError) else _UpstreamError()
    status = response.status
    credentials = classify_status(status) if status in (401, 403) else None
    message = upstream_message(response, secret)
    mapped = _mapped(error, status)
    if mapped is not None:
        return ProviderError(
            mapped.status,
            f"{mapped.what}: {message}",
            type_=mapped.type,
            code=mapped.code,
            param=detail.param or ("messages" if mapped is _CONTEXT else None),
            unhealthy=mapped.unhealthy or credentials,
        )
    return ProviderError(
        client_status(status),
        f"{_UPSTREAM}: {message}",
        type_=detail.type or (_INVALID if status < 500 else _SERVER),
        code=detail.code if isinstance(detail.code, str) else None,  # an int is a status, not a code
        param=detail.param,
        unhealthy=credentials,
    )


def stream_error(error: bytes, secret: str | None = None) -> ProviderError:
    """The client's error for an error object the upstream sent inside a 200 stream.

    The status is llama-server's integer ``code`` when it has one (a stream has no other), else 500: the
    upstream failed mid-answer. It is then classified like any failed response.
    """
    try:
        decoded = _error_decoder.decode(error)
    except msgspec.DecodeError:
        decoded = None
    code = decoded.code if isinstance(decoded, _UpstreamError) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return upstream_error(UpstreamResponse(status, b'{"error":' + error + b"}"), secret)


def transport_error(exc: TransportFailure, endpoint: str) -> ProviderError:
    if classify_transport(exc).type is ErrorType.TIMEOUT:
        return ProviderError(504, f"the upstream model at {endpoint} did not answer in time", code="timeout")
    return ProviderError(502, f"cannot reach the upstream model at {endpoint}: {type(exc).__name__}")
