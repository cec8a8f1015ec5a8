"""The ingress's fast lane: the two hot routes answered without Litestar's routing, parsing and responses.

``POST /v1/chat/completions`` is what every gateway request is, and ``GET /v1/models`` (no query) is what
load balancers, SDKs and dashboards poll. Litestar's per-request machinery (routing, the signature model,
response objects, its exception middleware) costs more CPU than modelbus's own work on these routes, so the
lane serves them on the raw ASGI interface, doing the same work through the same pieces: the models list
from the renderer's cached bytes, a chat through :class:`~modelbus.ingress.controllers.chat.ChatCompletions`
(the Litestar handler's own core), errors through :func:`~modelbus.ingress.errors.api_error_body`.

Anything the lane would not answer exactly as Litestar does goes on to the app with the body replayed: a
body that does not decode strictly into the request type (the app then answers 400 in its shape, or accepts
what its laxer parsing accepts), one over ``max_body_bytes`` (413), a query string, a store not yet
initialized, an unexpected exception before a response. Auth, request ids, metrics and the request's log
line run in front of the lane, as for every route; the lane sets ``path_template`` for the metrics as
Litestar's router does.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from modelbus.ingress.asgi_json import send_json
from modelbus.ingress.controllers.chat import SSE_HEADERS, ChatCompletions
from modelbus.ingress.disconnect import unless_disconnected
from modelbus.ingress.errors import ApiError, api_error_body, bus_failure_error
from modelbus.ingress.model_query import ModelQuery
from modelbus.ingress.model_rendering import ModelRenderer
from modelbus.ingress.scope_headers import header
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.work_queue.errors import BusFailure
from modelbus.schemas.chat import ChatResult
from modelbus.schemas.openai import ChatCompletionRequest

__all__ = ("FastLane",)

MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"
_LIST = ModelQuery()
_SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *((name.lower().encode(), value.encode()) for name, value in SSE_HEADERS.items()),
]
_encoder = msgspec.json.Encoder()
_decode_chat = msgspec.json.Decoder(ChatCompletionRequest).decode


class FastLane:
    """ASGI: the hot routes here (see the module), any other request to ``app``."""

    def __init__(
        self, app: ASGIApp, views: ModelViewStore, renderer: ModelRenderer, chat: ChatCompletions, *,
        max_body_bytes: int,
    ) -> None:  # fmt: skip
        self._app = app
        self._views = views
        self._renderer = renderer
        self._chat = chat
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            path, method = scope["path"], scope["method"]
            if path == CHAT_PATH and method == "POST":
                await self._chat_completion(scope, receive, send)
                return
            if (
                path == MODELS_PATH
                and method == "GET"
                and not scope["query_string"]
                and self._views.initialized
            ):
                await self._models(scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = self._renderer.list_body(_LIST)
        except Exception:  # noqa: BLE001 - the app owns every error: it meets this one again and answers
            await self._app(scope, receive, send)
            return
        scope["path_template"] = MODELS_PATH
        await send_json(send, 200, body)

    async def _chat_completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _declared_length(scope) > self._max_body:  # refused before the body is sent, by the app
            await self._app(scope, receive, send)
            return
        messages, body, whole = await _read_body(receive, self._max_body)
        data: ChatCompletionRequest | None = None
        if whole:
            try:
                data = _decode_chat(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                data = None
        if data is None:
            await self._app(scope, _replay(messages, receive), send)
            return
        scope["path_template"] = CHAT_PATH
        task = self._chat.task(scope, data)
        try:
            started = await self._chat.start(data, body, task, receive)
        except (ApiError, BusFailure) as exc:
            await task.fail(exc)
            error = bus_failure_error(exc) if isinstance(exc, BusFailure) else exc
            headers = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
            await send_json(send, error.status_code, _encoder.encode(api_error_body(error)), headers)
            return
        except BaseException as exc:
            await task.fail(exc)
            raise
        if started is None:  # the client left; nobody will read a response
            await task.finish(499)
            await send_json(send, 499, b"")
            return
        pending, first = started
        if isinstance(first, ChatResult):
            answer = bytes(first.data)
            task.add_completion(answer)
            await task.finish(200)
            await send_json(send, 200, answer)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        events = self._chat.events(pending, first, task)

        async def stream() -> None:
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})

        try:
            # a client that leaves mid-stream ends it here (the events' own cleanup cancels the job)
            await unless_disconnected(receive, stream)
        finally:
            await events.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(receive: Receive, limit: int) -> tuple[list[Any], bytes, bool]:
    """The messages read, the body, and whether it is whole and within ``limit`` (else it is not read on:
    the app reads the rest, and refuses what is too large)."""
    messages: list[Any] = []
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, b"", False  # the client left before sending it all
        chunk = message.get("body", b"")
        size += len(chunk)
        parts.append(chunk)
        if size > limit:
            return messages, b"", False
        if not message.get("more_body", False):
            return messages, b"".join(parts), True


def _declared_length(scope: Scope) -> int:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else 0  # a malformed one: the server's


def _replay(messages: list[Any], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then goes on reading the client."""
    queued = list(messages)

    async def replayed() -> Any:
        return queued.pop(0) if queued else await receive()

    return replayed
