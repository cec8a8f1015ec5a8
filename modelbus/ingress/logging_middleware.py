"""Request ids and the one log line per request, as ASGI middleware around everything else.

It wraps the whole app (routing, auth, error handling), so even a 404 for an unknown route, a 401 or a 500
gets an ``x-request-id`` header and a log line. The id comes from the client's ``x-request-id`` when that is
short and plain, else it is generated. It is bound to structlog's context for the request and stored in the
scope's state as ``request_id`` for handlers. The log line holds method, path, status, duration_ms and
request_id; never headers or the query string (where secrets travel).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from modelbus.ingress.asgi_json import send_json
from modelbus.ingress.errors import error_body
from modelbus.runtime.ids import unique_hex

__all__ = ("REQUEST_ID_HEADER", "RequestLogging", "request_id_from")

REQUEST_ID_HEADER = "x-request-id"
_HEADER = REQUEST_ID_HEADER.encode()
_SANE_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")

log = structlog.get_logger("ingress.http")


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's request id if it is sane (up to 128 plain characters), else a new random one."""
    for name, value in headers:
        if name == _HEADER:
            if _SANE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return unique_hex(16)


class RequestLogging:
    """ASGI middleware: request id in, request id out, and one structured line when the response ends."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        body = msgspec.json.encode(error_body(500, "Internal server error", code="internal_error"))
        self._fallback = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        header = (_HEADER, request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        outcome = "ok"
        # the server runs each request in a task of its own, whose context dies with it: nothing to unbind
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            try:
                await self._app(scope, receive, send_with_id)
            except Exception:
                outcome = "unhandled_exception"
                if status:  # the response has begun; all we can do is let the server drop it
                    raise
                status = 500
                # a JSON 500 for an exception that escaped the app before it started a response
                await send_json(send, 500, self._fallback, (header,))
        except BaseException:
            outcome = "aborted" if outcome == "ok" else outcome
            raise
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            fields = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": duration_ms,
                "request_id": request_id,
            }
            if outcome != "ok":
                log.error("http.request", outcome=outcome, **fields)
            elif status >= 500:
                log.warning("http.request", **fields)
            else:
                log.info("http.request", **fields)
