"""``TaskRecorder``: publish a :class:`~modelbus.schemas.history.TaskEvent` for each piece of work a component
did.

Events are published without waiting for JetStream's acknowledgement (the subject is captured by the
``MODELBUS_TASKS`` stream all the same): history must never slow a request down or fail it. While NATS is
unreachable, events are dropped and counted, not buffered; the counter is in the component's statistics.
"""

from __future__ import annotations

import time

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client

from modelbus.config import HistorySettings
from modelbus.runtime.jetstream import ensure_tasks_stream
from modelbus.runtime.tasks.tracing import Span
from modelbus.schemas.history import TaskEvent
from modelbus.schemas.subjects import task_subject

__all__ = ("TaskRecorder",)

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
ERROR_CHARS = 1000  # error messages are kept whatever `record` says: they are ours, and masked of keys


class TaskRecorder:
    """Records this component's spans; ``enabled: false`` makes every call a no-op."""

    def __init__(self, nc: Client, settings: HistorySettings, *, component: str, worker_id: str = "") -> None:
        self.nc = nc
        self.settings = settings
        self.component = component
        self.worker_id = worker_id
        self.subject = task_subject(component)
        self.published = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return bool(self.settings.enabled)

    @property
    def keeps_text(self) -> bool:
        """Whether prompts and answers are recorded at all (worth collecting them)."""
        return bool(self.settings.enabled) and self.settings.record != "none"

    def stats(self) -> dict[str, int]:
        """For ``$SRV.STATS``: events published, and dropped while NATS was unreachable."""
        return {"published": self.published, "dropped": self.dropped}

    async def prepare(self) -> None:
        """Make sure the stream exists, so that no event published before a sink starts is lost."""
        if self.settings.enabled:
            await ensure_tasks_stream(self.nc.jetstream(), self.settings)

    def text(self, value: str | None) -> str | None:
        """``value`` as ``runtime.history.record`` allows it to be kept."""
        if value is None or self.settings.record == "none":
            return None
        if self.settings.record == "truncated" and len(value) > self.settings.max_chars:
            return value[: self.settings.max_chars] + "…"
        return value

    async def record(
        self,
        span: Span,
        *,
        task: str,
        started_at: float,
        outcome: str,
        model: str = "",
        request_id: str = "",
        status_code: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        input: str | None = None,
        output: str | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        if not self.settings.enabled:
            return
        event = TaskEvent(
            trace_id=span.trace_id,
            span_id=span.span_id,
            parent_span_id=span.parent_span_id,
            task=task,
            component=self.component,
            worker_id=self.worker_id,
            model=model,
            request_id=request_id,
            started_at=started_at,
            ended_at=time.time(),
            outcome=outcome,
            status_code=status_code,
            error_code=error_code,
            error_message=error_message[:ERROR_CHARS] if error_message else None,
            input=self.text(input),
            output=self.text(output),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            labels=labels or {},
        )
        if not self.nc.is_connected:
            self.dropped += 1
            return
        try:
            await self.nc.publish(self.subject, _encoder.encode(event))
        except nats.errors.Error as exc:
            self.dropped += 1
            log.debug("history.event_dropped", task=task, error=type(exc).__name__)
            return
        self.published += 1
