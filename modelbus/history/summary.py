"""The task history as the status page reads it: recent requests, and per-model load and failures over time.

:class:`HistoryResponder` answers :class:`~modelbus.schemas.history.HistoryQuery` on
``modelbus.v1.history.summary`` (queue group ``history``) from a process that can query the table: an NSQL
worker keeping its own copy, or the history service with a ClickHouse server. Only the ingress's spans are
read (one per request a client made); two bounded queries, run on the engine's read-only readers.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from modelbus.runtime.clickhouse.engine import ClickHouse, engine_message
from modelbus.runtime.clickhouse.names import TableRef
from modelbus.schemas.history import HistoryQuery, HistorySummary, ModelSeries, RecentTask, SeriesBucket
from modelbus.schemas.subjects import HISTORY_QUEUE_GROUP, HISTORY_SUMMARY_SUBJECT

__all__ = ("MAX_LIMIT", "HistoryResponder", "summarize")

log = structlog.get_logger(__name__)
MAX_LIMIT = 200
_MAX_WINDOW_S = 24 * 3600
# the system's failures: what a client could not help (its own 4xx are not counted, 429 is: overload)
_FAILED = "outcome IN ('error', 'timeout') OR ifNull(status_code, 0) >= 500 OR ifNull(status_code, 0) = 429"
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(HistoryQuery)


def _recent_sql(table: str) -> str:  # ``table`` is a quoted identifier (TableRef.sql), never input
    return (
        "SELECT trace_id, task, model, outcome, status_code, error_code, "  # noqa: S608 - quoted table
        "toUnixTimestamp64Milli(start_time) / 1000.0, execution_duration_ms, tokens_in, tokens_out "
        f"FROM {table} FINAL WHERE component = 'ingress' AND start_time >= now64(3) - INTERVAL 1 DAY "
        "ORDER BY start_time DESC LIMIT {limit:UInt32}"
    )


def _series_sql(table: str) -> str:
    return (
        "SELECT model, "  # noqa: S608 - quoted table
        "toUnixTimestamp(toStartOfInterval(start_time, toIntervalSecond({bucket:UInt32}))) AS b, "
        f"count(), countIf({_FAILED}), sum(ifNull(tokens_out, 0)) "
        f"FROM {table} FINAL WHERE component = 'ingress' AND model != '' "
        "AND start_time >= now64(3) - toIntervalSecond({window:UInt32}) GROUP BY model, b ORDER BY model, b"
    )


def summarize(client: Any, table: TableRef, query: HistoryQuery) -> HistorySummary:
    """Both queries on one reader (blocking; ``client`` is a clickhouse-connect client)."""
    limit = max(0, min(query.limit, MAX_LIMIT))
    bucket = max(1, min(query.bucket_s, 3600))
    window = max(bucket, min(query.window_s, _MAX_WINDOW_S))
    rows = client.query(_recent_sql(table.sql), parameters={"limit": limit}).result_rows
    recent = tuple(
        RecentTask(
            trace_id=trace,
            task=task,
            model=model,
            outcome=outcome,
            status_code=status,
            error_code=code,
            started_at=float(started),
            duration_ms=float(ms),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
        for trace, task, model, outcome, status, code, started, ms, tokens_in, tokens_out in rows
    )
    rows = client.query(_series_sql(table.sql), parameters={"bucket": bucket, "window": window}).result_rows
    by_model: dict[str, list[SeriesBucket]] = {}
    for model, start, requests, errors, tokens in rows:
        by_model.setdefault(model, []).append(
            SeriesBucket(
                start=float(start), requests=int(requests), errors=int(errors), tokens_out=int(tokens)
            )
        )
    series = tuple(ModelSeries(model=m, buckets=tuple(b)) for m, b in by_model.items())
    return HistorySummary(available=True, bucket_s=bucket, recent=recent, series=series)


class HistoryResponder:
    """``async with HistoryResponder(nc, engine, table)``: answers history queries while entered."""

    def __init__(self, nc: Client, engine: ClickHouse, table: TableRef) -> None:
        self._nc = nc
        self._engine = engine
        self._table = table
        self._sub: Subscription | None = None
        self._limiter = anyio.CapacityLimiter(2)  # a page polled by many tabs must not take every reader

    async def __aenter__(self) -> HistoryResponder:
        self._sub = await self._nc.subscribe(
            HISTORY_SUMMARY_SUBJECT, queue=HISTORY_QUEUE_GROUP, cb=self._answer
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with anyio.move_on_after(2, shield=True):
                await sub.unsubscribe()

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        started = time.perf_counter()
        try:
            query = _decoder.decode(msg.data) if msg.data else HistoryQuery()
        except msgspec.ValidationError as exc:
            summary = HistorySummary(available=False, reason=f"bad history query: {exc}")
        else:
            try:
                async with self._limiter:
                    summary = await self._engine.run_read(lambda c: summarize(c, self._table, query))
            except Exception as exc:  # noqa: BLE001 - a failed query is an answer, never a dead subscription
                log.warning("history.summary_failed", error=engine_message(exc, limit=200))
                summary = HistorySummary(available=False, reason="the task history could not be read")
        await msg.respond(_encoder.encode(summary))
        log.debug("history.summary", seconds=round(time.perf_counter() - started, 4), ok=summary.available)
