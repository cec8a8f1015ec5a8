"""The ``task_history`` table: its definition, and one row per task event or model status change.

Columns follow Spice's ``task_history`` (``input``, ``captured_output``, ``start_time``, ``end_time``,
``execution_duration_ms``, ``error_message``, ``labels``) with what a distributed system adds: the model,
the worker that did the work, the outcome, the error code and tokens. A model status change is a row with
``task = 'model_status'`` from the ``registry``: ``captured_output`` reads ``loading -> ready``.

The engine is ``ReplacingMergeTree`` ordered by the span: an event written twice (a sink that died
between writing a batch and acknowledging it) collapses into one row when parts merge; ``FINAL`` in a
query removes such a duplicate at once.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from modelbus.config import HistorySettings
from modelbus.runtime.clickhouse.names import TableRef, quote_identifier
from modelbus.schemas.history import TaskEvent
from modelbus.schemas.views import ModelStatusEvent

__all__ = (
    "COLUMNS",
    "create_statement",
    "ensure_history_table",
    "event_row",
    "history_table",
    "status_row",
)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("trace_id", "String"),
    ("span_id", "String"),
    ("parent_span_id", "Nullable(String)"),
    ("task", "LowCardinality(String)"),
    ("component", "LowCardinality(String)"),
    ("model", "LowCardinality(String)"),
    ("worker_id", "String"),
    ("request_id", "String"),
    ("input", "Nullable(String)"),
    ("captured_output", "Nullable(String)"),
    ("start_time", "DateTime64(3, 'UTC')"),
    ("end_time", "DateTime64(3, 'UTC')"),
    ("execution_duration_ms", "Float64"),
    ("outcome", "LowCardinality(String)"),
    ("status_code", "Nullable(UInt16)"),
    ("error_code", "Nullable(String)"),
    ("error_message", "Nullable(String)"),
    ("tokens_in", "Nullable(UInt32)"),
    ("tokens_out", "Nullable(UInt32)"),
    ("labels", "Map(String, String)"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


def history_table(database: str, settings: HistorySettings) -> TableRef:
    """Where the history is kept: ``runtime.history.table`` in the engine's database."""
    return TableRef(database, settings.table)


def create_statement(table_sql: str, *, keep_days: int = 0) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``table_sql`` (an already quoted ``db.table``).

    Rows older than ``keep_days`` (0: none) are dropped as parts merge; a table that exists keeps the TTL it
    was made with (change it with ``ALTER TABLE ... MODIFY TTL``).
    """
    columns = ",\n    ".join(f"`{name}` {type_}" for name, type_ in COLUMNS)
    ttl = f"TTL toDateTime(start_time) + INTERVAL {int(keep_days)} DAY\n" if keep_days > 0 else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {table_sql} (\n    {columns}\n)\n"
        "ENGINE = ReplacingMergeTree\n"
        "PARTITION BY toYYYYMM(start_time)\n"
        "ORDER BY (toDate(start_time), task, span_id)\n"
        f"{ttl}"
        "COMMENT 'modelbus task history: one row per request, completion, text-to-SQL task and model "
        "status change'"
    )


def ensure_history_table(client: Any, table: TableRef, *, keep_days: int = 0) -> None:
    """Create the table if it is not there (blocking; ``client`` is a clickhouse-connect client)."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(table.database)}")
    client.command(create_statement(table.sql, keep_days=keep_days))


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def event_row(event: TaskEvent) -> tuple[Any, ...]:
    return (
        event.trace_id,
        event.span_id,
        event.parent_span_id,
        event.task,
        event.component,
        event.model,
        event.worker_id,
        event.request_id,
        event.input,
        event.output,
        _time(event.started_at),
        _time(event.ended_at),
        round(max(0.0, event.ended_at - event.started_at) * 1000, 3),
        event.outcome,
        event.status_code,
        event.error_code,
        event.error_message,
        event.tokens_in,
        event.tokens_out,
        dict(event.labels),
    )


def status_row(event: ModelStatusEvent) -> tuple[Any, ...]:
    """A model status change as a row; its span id is derived from model and revision, so it is stable."""
    digest = hashlib.blake2b(f"{event.model}\0{event.revision}".encode(), digest_size=24).hexdigest()
    previous = event.previous.value if event.previous else "none"
    labels = {
        "status": event.status.value,
        "previous": previous,
        "ready_workers": str(event.ready_workers),
        "workers": str(event.workers),
        "revision": str(event.revision),
    }
    return (
        digest[:32],
        digest[32:],
        None,
        "model_status",
        "registry",
        event.model,
        "",
        "",
        None,
        f"{previous} -> {event.status.value}",
        _time(event.at),
        _time(event.at),
        0.0,
        "error" if event.error else "ok",
        None,
        event.error.code if event.error else None,
        event.error_message,
        None,
        None,
        labels,
    )
