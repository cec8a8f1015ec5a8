"""One piece of work's span in the task history, from its start to its one finish.

Every process records its work the same way: the ingress one span per HTTP request, a worker one per job.
A span continues the caller's ``traceparent`` (or starts a trace) and hands its own on, so the work it asks
for becomes its child; it collects the answer's text (as far as ``runtime.history.record`` keeps it) and
usage, and is finished once with the status the work ended with. :func:`outcome_of` is the one rule from
status and code to outcome.
"""

from __future__ import annotations

import time

import anyio

from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.summaries import Usage, completion_output, stream_piece
from modelbus.runtime.tasks.tracing import start_span
from modelbus.schemas.history import TaskOutcome

__all__ = ("MAX_OUTPUT_CHARS", "REFUSALS", "TaskSpan", "outcome_of")

# codes of the 503s (and 429s) that refuse work before it starts: "rejected", not "error"
REFUSALS = frozenset(
    {"queue_full", "model_not_ready", "app_not_initialized", "bus_unavailable", "nsql_unavailable"}
)
MAX_OUTPUT_CHARS = 1 << 20  # a "full" record still stops collecting a stream's text here


def outcome_of(status: int, code: str | None) -> str:
    """2xx ``ok``; 499 (the client left) ``cancelled``; 504 ``timeout``; 429 and the refusals
    ``rejected``; anything else ``error``."""
    if status < 400:
        return TaskOutcome.OK
    if status == 499:
        return TaskOutcome.CANCELLED
    if status == 504:
        return TaskOutcome.TIMEOUT
    if status == 429 or code in REFUSALS:
        return TaskOutcome.REJECTED
    return TaskOutcome.ERROR


class TaskSpan:
    __slots__ = (
        "_chars", "_limit", "_parts", "finished", "input", "labels", "model", "recorder", "request_id",
        "span", "started_at", "task", "usage",
    )  # fmt: skip

    def __init__(
        self,
        recorder: TaskRecorder,
        *,
        task: str,
        traceparent: str | None,
        model: str = "",
        request_id: str = "",
        input: str | None = None,
    ) -> None:
        self.recorder = recorder
        self.task = task
        self.model = model
        self.request_id = request_id
        self.input = input
        self.span = start_span(traceparent)
        self.started_at = time.time()
        self.usage: Usage | None = None
        self.labels: dict[str, str] = {}
        self._parts: list[str] = []
        self._chars = 0
        settings = recorder.settings
        full = settings.record == "full"
        self._limit = (MAX_OUTPUT_CHARS if full else settings.max_chars + 1) if recorder.keeps_text else 0
        self.finished = False

    @property
    def traceparent(self) -> str:
        """The header for the work this span asks others to do (they become its children)."""
        return self.span.traceparent

    @property
    def keeps_text(self) -> bool:
        return self.recorder.keeps_text

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

    def add_completion(self, data: bytes) -> None:
        """A ``chat.completion`` answer: its text and usage."""
        text, usage = completion_output(data)
        self.add_output(text)
        self.set_usage(usage)

    def add_chunk(self, data: bytes) -> None:
        """A ``chat.completion.chunk``: its text while the record still takes it, and its usage."""
        if self.collects_output or b'"usage"' in data:
            text, usage = stream_piece(data)
            self.add_output(text)
            self.set_usage(usage)

    async def finish(
        self, status: int, *, error_code: str | None = None, error_message: str | None = None
    ) -> None:
        """Record the span with the status the work ended with (only the first call counts)."""
        if self.finished:
            return
        self.finished = True
        if not self.recorder.enabled:
            return
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
                labels=self.labels,
            )
