"""The one place that turns errors into OpenAI's error shape ``{"error": {message, type, code, param}}``.

Every 4xx and 5xx the ingress sends goes through here: errors raised on purpose (:class:`ApiError`), the
bus's failures (:class:`~modelbus.runtime.work_queue.errors.BusFailure`, each with its own status and code),
Litestar's own (validation, 404 for unknown routes, 405, 413 for oversized bodies) and unexpected exceptions,
which become a 500 whose body says nothing about the internals.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from modelbus.runtime.work_queue.errors import BusFailure
from modelbus.schemas.chat import ChatFailure
from modelbus.schemas.views import ModelView

__all__ = (
    "EXCEPTION_HANDLERS",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "api_error_body",
    "bus_failure_error",
    "error_body",
    "error_spec",
    "failure_error",
    "model_not_ready",
)

log = structlog.get_logger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

_DEFAULT_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}
_MAX_DETAIL = 500


class ErrorDetail(msgspec.Struct, kw_only=True, frozen=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(HTTPException):
    """An error the ingress raises on purpose, with its OpenAI ``type``, ``code`` and ``param``."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str,
        type_: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, status_code=status_code, headers=dict(headers) if headers else None)
        self.code = code
        self.type = type_ or default_type(status_code)
        self.param = param


def default_type(status_code: int) -> str:
    if status_code == 429:
        return "rate_limit_error"
    return SERVER_ERROR if status_code >= 500 else INVALID_REQUEST


def error_body(
    status_code: int, message: str, *, code: str | None, type_: str | None = None, param: str | None = None
) -> ErrorBody:
    return ErrorBody(
        error=ErrorDetail(message=message, type=type_ or default_type(status_code), param=param, code=code)
    )


def _respond(status_code: int, body: ErrorBody, headers: Mapping[str, str] | None) -> Response[ErrorBody]:
    return Response(content=body, status_code=status_code, headers=headers, media_type=MediaType.JSON)


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    """Litestar's validation detail plus what each failing parameter was told, and the first one's name."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts: list[str] = []
    param: str | None = None
    for problem in problems:
        if not isinstance(problem, Mapping):
            continue
        key = problem.get("key")
        if param is None and isinstance(key, str):
            param = key
        parts.append(f"{key}: {problem.get('message')}" if key else str(problem.get("message")))
    message = exc.detail if not parts else f"{exc.detail}: {'; '.join(parts)}"
    return message[:_MAX_DETAIL], param


def api_error_body(exc: ApiError) -> ErrorBody:
    """What an ApiError says, in the error shape (for Litestar's handler and the fast lane alike)."""
    return error_body(exc.status_code, exc.detail, code=exc.code, type_=exc.type, param=exc.param)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    if isinstance(exc, ApiError):
        return _respond(status, api_error_body(exc), exc.headers)
    param: str | None = None
    if isinstance(exc, ValidationException):
        message, param = _validation_message(exc)
    elif isinstance(exc, NotFoundException) and exc.detail == HTTPStatus.NOT_FOUND.phrase:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif isinstance(exc, MethodNotAllowedException):
        allowed = (exc.headers or {}).get("allow", "")
        message = f"Method {request.method} is not allowed on {request.url.path} (allowed: {allowed})"
    else:
        message = exc.detail or HTTPStatus(status).phrase
    body = error_body(status, message, code=_DEFAULT_CODES.get(status), param=param)
    return _respond(status, body, exc.headers)


def bus_failure_error(exc: BusFailure) -> ApiError:
    """A bus failure as the error a client gets: its status, code and message, and when to retry."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return ApiError(exc.status, exc.message, code=exc.code, headers=headers)


def handle_bus_failure(request: Request[Any, Any, Any], exc: BusFailure) -> Response[ErrorBody]:
    return handle_http_exception(request, bus_failure_error(exc))


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # No exc_info: structured tracebacks render frame locals, and the ASGI scope (with its headers) is one.
    log.error(
        "http.unhandled_exception",
        method=request.method,
        path=request.url.path,
        error=type(exc).__name__,
        traceback="".join(traceback.format_exception(exc, limit=20)),
    )
    body = error_body(500, "Internal server error", code=_DEFAULT_CODES[500])
    return _respond(500, body, None)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: handle_http_exception,
    BusFailure: handle_bus_failure,
    Exception: handle_unexpected,
}


def error_spec(description: str) -> ResponseSpec:
    """An OpenAPI response entry for an error status (the error shape above)."""
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


def model_not_ready(model: str, view: ModelView | None) -> ApiError:
    """503 for a known model that has no ready worker, naming its status (and error, if any)."""
    status = view.status.value if view is not None else "unknown"
    detail = (
        f" ({view.error.code}: {view.error_message})" if view is not None and view.error is not None else ""
    )
    return ApiError(
        503,
        f"The model `{model}` is not ready: its status is {status}{detail}",
        code="model_not_ready",
        param="model",
        headers={"Retry-After": "1"},
    )


def failure_error(failure: ChatFailure) -> ApiError:
    """The worker's failure as it is; a model not ready yet (still loading) says when to retry."""
    return ApiError(
        failure.status,
        failure.message,
        code=failure.code or "upstream_error",
        type_=failure.error_type,
        param=failure.param,
        headers={"Retry-After": "1"} if failure.code == "model_not_ready" else None,
    )
