"""Task history: one :class:`TaskEvent` per unit of work, published on ``modelbus.v1.tasks.<component>``.

Every part that does work reports it as a span of a W3C trace: the ingress one per HTTP request it accepted
for work (``chat``, ``chat_stream``, ``nsql``), a model worker one per completion it ran
(``ai_completion``), an NSQL worker one per question it turned into SQL (``text_to_sql``). A worker's span
is the child of the span that asked it (its ``traceparent``), so a whole request reads as one tree. The
history sink writes these, and the registry's model status changes, to ClickHouse's ``task_history``.

What a span records of prompts and answers (``input``/``output``) is set by ``runtime.history.record``:
nothing, the first ``max_chars`` characters, or everything. It is applied where the span is made, so a
prompt that must not be kept never travels.
"""

from __future__ import annotations

import msgspec

__all__ = (
    "HistoryQuery",
    "HistorySummary",
    "ModelSeries",
    "RecentTask",
    "SeriesBucket",
    "TaskEvent",
    "TaskOutcome",
)


class TaskOutcome:
    """The outcomes a span ends with (plain strings on the wire)."""

    OK = "ok"
    ERROR = "error"  # the work failed (the error code says why)
    REJECTED = "rejected"  # refused before any work: unknown model, not ready, queue full, bad input
    CANCELLED = "cancelled"  # the client went away
    TIMEOUT = "timeout"  # the deadline passed


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True, tag="modelbus.v1.task", tag_field="type"):
    trace_id: str  # 32 hex digits, the client's when it sent a ``traceparent``
    span_id: str  # 16 hex digits
    parent_span_id: str | None = None
    task: str  # chat, chat_stream, nsql, ai_completion, text_to_sql
    component: str  # ingress, model_worker, nsql_worker
    worker_id: str = ""  # the process that did the work
    model: str = ""
    request_id: str = ""  # the bus request id (the ingress's uuid)
    started_at: float  # unix seconds
    ended_at: float
    outcome: str = TaskOutcome.OK
    status_code: int | None = None  # the HTTP status the client got (ingress spans) or the worker's reply
    error_code: str | None = None
    error_message: str | None = None
    input: str | None = None  # what was asked, as runtime.history.record allows
    output: str | None = None  # what was answered, as runtime.history.record allows
    tokens_in: int | None = None
    tokens_out: int | None = None
    labels: dict[str, str] = {}


class HistoryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Asked on ``modelbus.v1.history.summary`` (queue group): the status page's view of the history."""

    limit: int = 30  # recent requests to list (at most 200)
    window_s: int = 3600  # the series cover this many seconds back from now
    bucket_s: int = 60


class RecentTask(msgspec.Struct, frozen=True, kw_only=True):
    """One request the ingress accepted (its span), newest first in :class:`HistorySummary`."""

    trace_id: str
    task: str
    model: str
    outcome: str
    status_code: int | None
    error_code: str | None
    started_at: float  # unix seconds
    duration_ms: float
    tokens_in: int | None
    tokens_out: int | None


class SeriesBucket(msgspec.Struct, frozen=True, kw_only=True):
    start: float  # unix seconds
    requests: int
    errors: int  # outcome error or timeout, or answered 429 or 5xx: the system's failures, not the client's
    tokens_out: int


class ModelSeries(msgspec.Struct, frozen=True, kw_only=True):
    """A model's requests per bucket; buckets with no request are left out."""

    model: str
    buckets: tuple[SeriesBucket, ...]


class HistorySummary(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to :class:`HistoryQuery`; ``available`` false (with ``reason``) when no one keeps one."""

    available: bool
    reason: str | None = None
    bucket_s: int = 60
    recent: tuple[RecentTask, ...] = ()
    series: tuple[ModelSeries, ...] = ()
