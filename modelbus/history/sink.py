"""``HistorySink``: write task events and model status changes to ClickHouse's ``task_history``, in batches.

It reads two streams with durable pull consumers of its own name: ``MODELBUS_TASKS`` (every span) and
``MODELBUS_EVENTS`` (model status changes). A batch is written when it holds ``batch_size`` events or its
oldest waited ``flush_interval`` seconds; only then are its messages acknowledged, so a sink that dies
loses nothing (the events are delivered again). While ClickHouse refuses a write the batch is retried
with backoff and nothing more is read: the streams keep the events (bounded by age and size).

Sinks that share a consumer name share the work (one table on a server, several sink processes). An
embedded engine keeps its own full copy of the history: each data directory has a consumer of its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import msgspec
import nats.errors
import structlog
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from clickhouse_connect.driver.exceptions import OperationalError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from modelbus.config import HistorySettings
from modelbus.history.table import COLUMN_NAMES, ensure_history_table, event_row, history_table, status_row
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.jetstream import (
    ensure_consumer,
    ensure_events_stream,
    ensure_tasks_stream,
    history_consumer_config,
)
from modelbus.schemas.history import TaskEvent
from modelbus.schemas.subjects import EVENTS_STREAM, PREFIX, TASKS_STREAM, TASKS_WILDCARD
from modelbus.schemas.views import ModelStatusEvent

__all__ = ("HistorySink",)

log = structlog.get_logger(__name__)
ACK_WAIT_S = 60.0
RETRY_MAX_S = 30.0
MAX_REFUSALS = 3
_task_decoder = msgspec.json.Decoder(TaskEvent)
_status_decoder = msgspec.json.Decoder(ModelStatusEvent)
Row = tuple[Any, ...]


def _task(data: bytes) -> Row:
    return event_row(_task_decoder.decode(data))


def _status(data: bytes) -> Row:
    return status_row(_status_decoder.decode(data))


class _Feed(msgspec.Struct, frozen=True):
    stream: str
    subject: str
    suffix: str
    to_row: Callable[[bytes], Row]


_FEEDS = (
    _Feed(TASKS_STREAM, TASKS_WILDCARD, "tasks", _task),
    _Feed(EVENTS_STREAM, f"{PREFIX}.events.model.>", "status", _status),
)


class HistorySink:
    """``async with HistorySink(nc, engine, settings, consumer=...)``: writing while entered.

    ``engine`` is open and owned by the caller. Exit stops reading, writes what it holds (bounded by a few
    seconds), and acknowledges what was written.
    """

    def __init__(
        self,
        nc: Client,
        engine: ClickHouse,
        settings: HistorySettings,
        *,
        consumer: str = "history",
        inactive_threshold: float | None = None,
    ) -> None:
        self.nc = nc
        self.engine = engine
        self.settings = settings
        self.table = history_table(engine.settings.database, settings)
        self.consumer = consumer
        self._inactive = inactive_threshold
        self.written = 0
        self.failed_writes = 0
        self.skipped = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._subs: list[JetStreamContext.PullSubscription] = []

    def stats(self) -> dict[str, object]:
        """For ``$SRV.STATS``: rows written, write failures (retried), events given up, and where."""
        return {
            "table": str(self.table),
            "consumer": self.consumer,
            "written": self.written,
            "failed_writes": self.failed_writes,
            "skipped": self.skipped,
        }

    async def __aenter__(self) -> HistorySink:
        js = self.nc.jetstream()
        await ensure_tasks_stream(js, self.settings)
        await ensure_events_stream(js)
        await self.engine.run_admin(
            partial(ensure_history_table, table=self.table, keep_days=self.settings.keep_days)
        )
        subs = []
        for feed in _FEEDS:
            config = history_consumer_config(
                f"{self.consumer}-{feed.suffix}", feed.subject, ack_wait=ACK_WAIT_S
            )
            if self._inactive is not None:
                config.inactive_threshold = self._inactive
            await ensure_consumer(js, feed.stream, config)
            sub = await js.pull_subscribe_bind(str(config.durable_name), stream=feed.stream)
            self._subs.append(sub)
            subs.append((feed, sub))
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for feed, sub in subs:
            self._tg.start_soon(self._follow, feed, sub, name=f"history-{feed.suffix}")
        log.info("history.sink_started", table=str(self.table), consumer=self.consumer)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        with anyio.move_on_after(2, shield=True):
            for sub in self._subs:  # no interest left: the server sends nothing more to a stale pull
                try:
                    await sub.unsubscribe()
                except nats.errors.Error:
                    break
        log.info("history.sink_stopped", written=self.written, failed_writes=self.failed_writes)

    async def _follow(self, feed: _Feed, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            await self._write(feed, await self._collect(feed, sub))

    async def _collect(self, feed: _Feed, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """Wait for an event, then gather more until the batch is full or the first waited ``flush_interval``.

        Events held here when the sink stops are not acknowledged: they are delivered again, to the next sink.
        """
        size, interval = self.settings.batch_size, self.settings.flush_interval
        batch: list[Msg] = []
        deadline = math.inf
        while len(batch) < size and (remaining := deadline - time.monotonic()) > 0:
            try:
                fetched = await sub.fetch(size - len(batch), timeout=max(0.05, min(remaining, interval)))
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:  # a reconnect: try again shortly
                log.warning("history.fetch_failed", feed=feed.suffix, error=type(exc).__name__)
                await anyio.sleep(0.5)
                continue
            if fetched and not batch:
                deadline = time.monotonic() + interval
            batch.extend(fetched)
        return batch

    def _rows(self, feed: _Feed, batch: list[Msg]) -> list[Row]:
        rows = []
        for msg in batch:
            try:
                rows.append(feed.to_row(msg.data))
            except (msgspec.DecodeError, ValueError, OverflowError) as exc:
                self.skipped += 1
                log.warning("history.bad_event", feed=feed.suffix, error=str(exc)[:200])
        return rows

    async def _write(self, feed: _Feed, batch: list[Msg]) -> None:
        """Insert the batch (retrying with backoff until it succeeds), then acknowledge it."""
        rows = self._rows(feed, batch)
        backoff, refusals = 0.5, 0
        while rows:
            try:
                await self.engine.run_admin(partial(self._insert, rows=rows))
                break
            except OperationalError as exc:  # unreachable: wait for it, however long (the stream keeps)
                self.failed_writes += 1
                log.warning("history.write_failed", rows=len(rows), error=str(exc)[:300], retry_in_s=backoff)
            except ClickHouseError as exc:  # refused: a few tries, then the batch is given up, not stuck on
                self.failed_writes += 1
                refusals += 1
                if refusals >= MAX_REFUSALS:
                    self.skipped += len(rows)
                    log.exception("history.batch_dropped", rows=len(rows), error=str(exc)[:300])
                    rows = []
                    break
                log.warning("history.write_refused", rows=len(rows), error=str(exc)[:300], retry_in_s=backoff)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)
        self.written += len(rows)
        for msg in batch:
            try:
                await msg.ack()
            except nats.errors.Error:
                break  # not acknowledged: delivered again, and collapsed by the table's engine
        log.info("history.batch_written", feed=feed.suffix, rows=len(rows))

    def _insert(self, client: Any, *, rows: list[Row]) -> None:
        client.insert(self.table.table, rows, column_names=COLUMN_NAMES, database=self.table.database)
