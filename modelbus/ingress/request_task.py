"""One HTTP request's span in the task history (``chat``, ``chat_stream``, ``nsql``), finished once.

The span continues the client's ``traceparent`` (or starts a trace); the work it puts on the bus carries
:attr:`RequestTask.traceparent`, so the worker's span is its child. The outcome follows the status the
client got: 2xx ``ok``; 429 and the 503s that refuse work before it is queued ``rejected``; 499 (the client
left) ``cancelled``; 504 ``timeout``; anything else ``error``. The usage, when a response carries one, is
also left in the request's state as ``usage`` (prompt, completion) for the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Stream

from modelbus.ingress.errors import ApiError
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.summaries import Usage
from modelbus.runtime.tasks.tracing import start_span
from modelbus.schemas.history import TaskOutcome

__all__ = ("RequestTask",)

_REFUSALS = frozenset(
    {"queue_full", "model_not_ready", "app_not_initialized", "bus_unavailable", "nsql_unavailable"}
)
MAX_OUTPUT_CHARS = 1 << 20  # a "full" record still stops collecting a stream's text here


def outcome_of(status: int, code: str | None) -> str:
    if status < 400:
        return TaskOutcome.OK
    if status == 499:
        return TaskOutcome.CANCELLED
    if status == 504:
        return TaskOutcome.TIMEOUT
    if status == 429 or (code in _REFUSALS):
        return TaskOutcome.REJECTED
    return TaskOutcome.ERROR


class RequestTask:
    def __init__(
        self,
        recorder: TaskRecorder,
        request: Request[Any, Any, Any],
        *,
        task: str,
        model: str,
        input: str | None,
    ) -> None:
        self.recorder = recorder
        self.request = request
        self.task = task
        self.model = model
        self.input = input
        self.span = start_span(request.headers.get("traceparent"))
        self.started_at = time.time()
        self.request_id = ""
        self.usage: Usage | None = None
        self._parts: list[str] = []
        self._chars = 0
        self._limit = min(recorder.settings.max_chars + 1, MAX_OUTPUT_CHARS) if recorder.keeps_text else 0
        self._finished = False

    @property
    def traceparent(self) -> str:
        return self.span.traceparent

    @property
    def collects_output(self) -> bool:
        return self._chars < self._limit

    def add_output(self, text: str) -> None:
        """Collect answer text (a stream's deltas) up to what the record keeps."""
        if text and self._chars < self._limit:
            self._parts.append(text)
            self._chars += len(text)

    def set_usage(self, usage: Usage | None) -> None:
        if usage is not None and (usage.prompt_tokens is not None or usage.completion_tokens is not None):
            self.usage = usage
            self.request.state.usage = (usage.prompt_tokens or 0, usage.completion_tokens or 0)

    async def around(self, answer: Callable[[], Awaitable[Response[Any]]]) -> Response[Any]:
        """Run the handler's work and finish the span with its outcome (a stream finishes it itself)."""
        try:
            response = await answer()
        except HTTPException as exc:  # ApiError and Litestar's own (413 for a body over the limit)
            code = exc.code if isinstance(exc, ApiError) else None
            await self.finish(exc.status_code or 500, error_code=code, error_message=exc.detail)
            raise
        except BaseException:
            await self.finish(499, error_code="client_closed")
            raise
        if not isinstance(response, Stream):
            await self.finish(response.status_code or 200)
        return response

    async def finish(
        self, status: int, *, error_code: str | None = None, error_message: str | None = None
    ) -> None:
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            await self.recorder.record(
                self.span,
                task=self.task,
                started_at=self.started_at,
                outcome=outcome_of(status, error_code),
                model=self.model,
                request_id=self.request_id,
                status_code=status,
                error_code=error_code,
                error_message=error_message,
                input=self.input,
                output="".join(self._parts) if self._parts else None,
                tokens_in=self.usage.prompt_tokens if self.usage else None,
                tokens_out=self.usage.completion_tokens if self.usage else None,
            )
