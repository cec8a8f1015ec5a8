"""The NSQL worker's span in the task history: one ``text_to_sql`` task per question it answered.

:class:`RecordedHandler` wraps the handler. The span is the child of the ingress's, and the model calls the
handler makes carry the span's own ``traceparent``, so each of them (an ``ai_completion``) is its child.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.tracing import start_span
from modelbus.schemas.history import TaskOutcome
from modelbus.schemas.nsql import NsqlRequest
from modelbus.workers.nsql.handler import Handled

__all__ = ("RecordedHandler",)


class RecordedHandler:
    def __init__(self, handle: Callable[[NsqlRequest], Awaitable[Handled]], recorder: TaskRecorder) -> None:
        self._handle = handle
        self.recorder = recorder

    async def __call__(self, request: NsqlRequest) -> Handled:
        span = start_span(request.traceparent)
        started = time.time()
        handled: Handled | None = None
        outcome = TaskOutcome.ERROR
        try:
            handled = await self._handle(msgspec.structs.replace(request, traceparent=span.traceparent))
        except anyio.get_cancelled_exc_class():
            outcome = TaskOutcome.CANCELLED
            raise
        finally:
            reply = handled.reply if handled is not None else None
            if reply is not None:
                outcome = {200: TaskOutcome.OK, 504: TaskOutcome.TIMEOUT}.get(reply.status, TaskOutcome.ERROR)
            with anyio.CancelScope(shield=True):
                await self.recorder.record(
                    span,
                    task="text_to_sql",
                    started_at=started,
                    outcome=outcome,
                    model=request.model,
                    request_id=request.request_id,
                    status_code=reply.status if reply else None,
                    error_code=reply.error_code if reply else None,
                    error_message=reply.error_message if reply else None,
                    input=request.query,
                    output=reply.sql if reply else None,
                    labels={
                        "datasets": ",".join(request.datasets),
                        "attempts": str(reply.attempts if reply else 0),
                        "format": request.format.value,
                    },
                )
        return handled
