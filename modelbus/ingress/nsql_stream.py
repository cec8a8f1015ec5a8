"""``POST /v1/nsql`` with ``stream: true``: Spice's one-event stream, with keep-alives and error events.

While the question is answered, the stream sends the comment ``: nsql still in progress`` (Spice's words)
every ``runtime.nsql.stream_keepalive`` seconds, so proxies and clients do not time out on a slow model. Then
one ``data:`` event carries exactly the body the request would get without ``stream``, in its negotiated
format. JSON bodies are one line. A body of several lines (CSV, text, SQL) is one ``data:`` line per line;
SSE clients join them with ``\\n``, so it arrives whole, with every line end (CSV's CRLF too) as ``\\n``.
The stream has already answered 200, so a failure is ``event: error`` with the OpenAI error shape as its data
(the code says what happened), and then the end. A client that leaves cancels the work, as without ``stream``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio
import msgspec
import structlog

from modelbus.ingress.errors import ApiError, bus_failure_error, error_body
from modelbus.ingress.nsql_reply import ReplyReader, failure_of
from modelbus.ingress.request_task import RequestTask
from modelbus.runtime.work_queue.errors import BusFailure

__all__ = ("EVENT_STREAM", "KEEPALIVE", "SSE_HEADERS", "data_event", "error_event", "nsql_events")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
EVENT_STREAM = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": nsql still in progress\n\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def data_event(body: bytes) -> bytes:
    """``body`` as one SSE event: a ``data:`` line per line, so the client's joined data is the body."""
    return b"".join(b"data: " + line + b"\n" for line in _LINE_END.split(body)) + b"\n"


def error_event(error: ApiError) -> bytes:
    body = error_body(error.status_code, error.detail, code=error.code, type_=error.type, param=error.param)
    return b"event: error\ndata: " + _encoder.encode(body) + b"\n\n"


async def nsql_events(reader: ReplyReader, *, keepalive: float, task: RequestTask) -> AsyncIterator[bytes]:
    """The stream's bytes; it owns the request from here: it closes it (cancelling the work unless the
    answer came), and finishes the task's span with the outcome the client saw."""
    complete = False
    error: ApiError | None = None
    try:
        while True:
            try:
                got = await reader.wait(keepalive)
            except BusFailure as exc:
                error = bus_failure_error(exc)
            else:
                if got is None:
                    yield KEEPALIVE
                    continue
                complete = True  # the worker is done: nothing to cancel
                task.add_output(got.reply.sql or "")
                if got.reply.status == 200:
                    yield data_event(got.body)
                    return
                error = failure_of(got.reply)
            yield error_event(error)
            return
    finally:
        with anyio.CancelScope(shield=True):
            await reader.pending.close(cancel=not complete)
            if error is not None:
                await task.finish(error.status_code, error_code=error.code, error_message=error.detail)
            elif complete:
                await task.finish(200)
            else:
                await task.finish(499, error_code="client_closed")
