"""The server-sent-event stream of ``GET /v1/models/events``: the current views, then every status change.

A connection registers a listener on the :class:`~modelbus.ingress.view_store.ModelViewStore` and, in the same
step,
takes its snapshot. It then sends:

* ``event: model`` for each view (a :class:`~modelbus.schemas.views.ModelView`), oldest KV revision first,
``id:`` its
  revision;
* ``event: snapshot_complete`` (``{"models", "revision"}``), ``id:`` the highest revision the store had;
* ``event: status`` (a :class:`~modelbus.schemas.views.ModelStatusEvent`) when a model's status or error code
changes,
  and ``event: removed`` (``{"model", "revision"}``) when a model leaves the registry, ``id:`` the revision;
* ``: ping`` comments while nothing happens, so proxies keep the connection open.

A stream opened before the store's first replay has ended starts with an empty snapshot; each model then
arrives as a ``status`` event with ``previous`` null. Ids only grow: they are revisions of the one KV bucket.
The status events are derived from the same watch that serves ``/v1/models``, by the registry's own rule
(:func:`~modelbus.schemas.views.status_event`), so the stream and the list never disagree, and changes
made while NATS was away arrive after the re-watch.

A client that does not keep up (its listener's buffer fills while its socket is not taking data) gets a last
``event: error`` (code ``slow_consumer``) if it can still take one, and the stream ends; so does every stream
when the store closes its listeners. A client that disconnects ends everything at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import structlog
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.types import Message, Receive, Send, TypeEncodersMap

from modelbus.ingress.errors import error_body
from modelbus.ingress.view_store import ListenerEnd, ModelViewStore, ViewChange, ViewListener
from modelbus.schemas.views import ModelRemoved, ModelStatusEvent, SnapshotComplete, status_event

__all__ = (
    "EVENT_STREAM",
    "SSE_EVENTS",
    "StatusStream",
    "StreamSettings",
    "change_event",
)

log = structlog.get_logger(__name__)

EVENT_STREAM = "text/event-stream"
SSE_EVENTS = ("model", "snapshot_complete", "status", "removed", "error")
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_PING = b": ping\n\n"
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class StreamSettings:
    buffer: int = 256  # changes a client may fall behind before it is disconnected
    keepalive_s: float = 15.0  # a ``: ping`` comment after this long without an event
    final_timeout_s: float = 1.0  # how long the last event (and the end) may wait on a stuck socket


def change_event(change: ViewChange) -> ModelStatusEvent | None:
    """The status event a change carries, built as the registry builds it; None if the status held."""
    if change.view is None:
        return None
    return status_event(change.model, change.previous, change.view, change.revision)


def _frame(event: str, data: msgspec.Struct | dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + _encoder.encode(data) + b"\n\n"


def _snapshot_frames(listener: ViewListener) -> bytes:
    frames = [_frame("model", view, revision) for view, revision in listener.snapshot]
    done = SnapshotComplete(models=len(listener.snapshot), revision=listener.revision)
    frames.append(_frame("snapshot_complete", done, listener.revision))
    return b"".join(frames)


def _change_frame(change: ViewChange) -> bytes | None:
    if change.view is None:
        return _frame("removed", ModelRemoved(model=change.model, revision=change.revision), change.revision)
    event = change_event(change)
    return _frame("status", event, change.revision) if event is not None else None


def _end_frame(reason: ListenerEnd | None) -> bytes:
    if reason is ListenerEnd.OVERFLOW:
        body = error_body(
            503,
            "The client did not keep up with the event stream; reconnect for a fresh snapshot",
            code="slow_consumer",
        )
    else:
        body = error_body(503, "The ingress is stopping; reconnect shortly", code="shutting_down")
    return _frame("error", body)


def _body(data: bytes, *, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


class _StatusStreamASGI(ASGIResponse):
    _should_set_content_length = False

    def __init__(self, views: ModelViewStore, settings: StreamSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._views = views
        self._settings = settings

    async def send_body(self, send: Send, receive: Receive) -> None:
        with self._views.listen(buffer=self._settings.buffer) as listener:
            log.debug("events.stream_opened", listeners=self._views.listeners)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._until_disconnect, receive, tg.cancel_scope)
                with anyio.CancelScope() as writing:
                    tg.start_soon(self._until_ended, listener, writing)
                    await self._write(listener, send)
                # the listener ended (overflow, or the store closed it): a last event if the socket takes it
                log.info("events.stream_ended", reason=listener.end_reason)
                with anyio.move_on_after(self._settings.final_timeout_s):
                    await send(_body(_end_frame(listener.end_reason), more=False))
                tg.cancel_scope.cancel()

    async def _write(self, listener: ViewListener, send: Send) -> None:
        await send(_body(_snapshot_frames(listener)))
        while True:
            change: ViewChange | None = None
            with anyio.move_on_after(self._settings.keepalive_s):
                try:
                    change = await listener.receive()
                except anyio.EndOfStream:
                    return
            if change is None:
                await send(_body(_PING))
                continue
            frame = _change_frame(change)
            if frame is not None:
                await send(_body(frame))

    @staticmethod
    async def _until_ended(listener: ViewListener, writing: anyio.CancelScope) -> None:
        """Stop the writer when the listener ends, even while it waits on a socket that takes no data."""
        await listener.ended.wait()
        writing.cancel()

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


class StatusStream(Response[bytes]):
    """The streaming answer of ``GET /v1/models/events`` (see the module docstring)."""

    def __init__(self, views: ModelViewStore, settings: StreamSettings) -> None:
        super().__init__(b"", media_type=EVENT_STREAM, headers=_HEADERS)
        self._views = views
        self._settings = settings

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return _StatusStreamASGI(
            self._views,
            self._settings,
            background=self.background or background,
            cookies=[*self.cookies, *(cookies or ())],
            encoded_headers=encoded_headers,
            headers={**(headers or {}), **self.headers},
            is_head_response=is_head_response,
            media_type=EVENT_STREAM,
            status_code=200,
        )
