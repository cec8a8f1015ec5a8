"""Run guarded statements on the read-only, limited readers, in worker threads.

Failures come back as a typed :class:`QueryError`, classified from clickhouse-connect's exception type and
ClickHouse's numeric error code (never from message text), with a message the retry loop can hand to the
model:

- ``limit``: the statement hit a limit (result rows or bytes, time, memory); the message says which and
  how to stay under it;
- ``readonly``: the engine refused it as a write or a settings change (the guard should have caught it);
- ``sql``: any other ClickHouse error about the statement (unknown column, bad types, syntax, ...);
- ``engine``: not the statement's fault (connection lost, engine closed, a client-side failure: anything
  without a ClickHouse error code); retrying with another statement will not help.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from clickhouse_connect.driver.exceptions import Error

from modelbus.config.model import ClickHouseSettings
from modelbus.runtime.clickhouse.engine import ClickHouse, Column, QueryResult, engine_message
from modelbus.workers.nsql.guard import Allowed

__all__ = ("ErrorKind", "Executor", "QueryError", "classify")

log = structlog.get_logger(__name__)


class ErrorKind(enum.StrEnum):
    SQL = "sql"
    LIMIT = "limit"
    READONLY = "readonly"
    ENGINE = "engine"


class QueryError(msgspec.Struct, frozen=True):
    kind: ErrorKind
    message: str
    code: int | None = None  # ClickHouse's error code when there is one

    @property
    def retryable(self) -> bool:
        """Whether another statement could succeed (everything but engine failures)."""
        return self.kind is not ErrorKind.ENGINE


# ClickHouse error codes (src/Common/ErrorCodes.cpp).
_ROWS_CODES = frozenset({158, 396})  # TOO_MANY_ROWS, TOO_MANY_ROWS_OR_BYTES
_BYTES_CODES = frozenset({307})  # TOO_MANY_BYTES
_TIME_CODES = frozenset({159, 160})  # TIMEOUT_EXCEEDED, TOO_SLOW
_MEMORY_CODES = frozenset({241, 173})  # MEMORY_LIMIT_EXCEEDED, CANNOT_ALLOCATE_MEMORY
_READONLY_CODES = frozenset({164, 497})  # READONLY, ACCESS_DENIED
_ENGINE_CODES = frozenset({202, 209, 210, 394, 1000})  # too many queries, socket, network, cancelled, Poco


def classify(exc: Exception, engine: ClickHouse) -> QueryError:
    """A failed statement's exception as a :class:`QueryError` (see the module docstring)."""
    settings = engine.settings
    code = exc.code if isinstance(exc, Error) else None
    message = engine_message(exc)
    if code in _ROWS_CODES or code in _BYTES_CODES:
        return QueryError(ErrorKind.LIMIT, f"{_rows_hint(settings, 'more')} {message}", code)
    if code in _TIME_CODES:
        hint = f"The query ran longer than {settings.max_execution_time:g} s: make it cheaper."
        return QueryError(ErrorKind.LIMIT, f"{hint} {message}", code)
    if code in _MEMORY_CODES:
        hint = f"The query needs more than {settings.max_memory_usage} bytes of memory: make it cheaper."
        return QueryError(ErrorKind.LIMIT, f"{hint} {message}", code)
    if code in _READONLY_CODES:
        return QueryError(ErrorKind.READONLY, f"Only reads are allowed. {message}", code)
    if code is None or code in _ENGINE_CODES:
        return QueryError(ErrorKind.ENGINE, message, code)
    return QueryError(ErrorKind.SQL, message, code)


class Executor:
    """Runs :class:`~modelbus.workers.nsql.guard.Allowed` statements (and nothing else) on the engine's
    readers."""

    def __init__(self, engine: ClickHouse) -> None:
        self.engine = engine

    async def execute(self, statement: Allowed) -> QueryResult | QueryError:
        """Run the statement; its rows with column names and ClickHouse types, or why it failed."""
        return await self.engine.run_read(
            lambda client: self._safely(self._fetch, client, statement.executable)
        )

    async def validate(self, statement: Allowed) -> QueryError | None:
        """Plan the statement with ``EXPLAIN`` without running it: unknown tables, columns, functions and
        type errors show up; no rows are read. (ClickHouse does evaluate constant scalar subqueries
        while planning; they run under the same read-only limits.)"""
        outcome = await self.engine.run_read(
            lambda client: self._safely(self._explain, client, statement.executable)
        )
        return outcome if isinstance(outcome, QueryError) else None

    def _safely(
        self, run: Callable[[Any, str], QueryResult], client: Any, sql: str
    ) -> QueryResult | QueryError:
        try:
            return run(client, sql)
        except _TooManyRows as exc:
            error = QueryError(ErrorKind.LIMIT, _rows_hint(self.engine.settings, f"at least {exc.rows} rows"))
        except Error as exc:
            error = classify(exc, self.engine)
        except Exception as exc:  # a client-side failure (decoding, ...) must not take the worker down
            log.warning("nsql.client_failed", sql=sql, exc_info=True)
            error = classify(exc, self.engine)
        log.debug("nsql.query_error", kind=error.kind.value, code=error.code, message=error.message)
        return error

    @staticmethod
    def _explain(client: Any, sql: str) -> QueryResult:
        client.query(f"EXPLAIN {sql}")  # chdb cannot stream EXPLAIN; the plan text is small
        return QueryResult(columns=(), rows=[])

    def _fetch(self, client: Any, sql: str) -> QueryResult:
        """Stream the result block by block and stop as soon as it has more rows than allowed.

        ClickHouse's own ``max_result_rows`` misses some results (``SELECT arrayJoin(range(1000000))``
        reads no table and is not counted), so the count is enforced here too, before rows pile up.
        """
        limit = self.engine.settings.max_result_rows
        rows: list[tuple[Any, ...]] = []
        with client.query_row_block_stream(sql) as stream:
            names = tuple(stream.source.column_names)
            types = tuple(t.name for t in stream.source.column_types)
            for block in stream:
                rows.extend(tuple(row) for row in block)
                if len(rows) > limit:
                    raise _TooManyRows(len(rows))
        if not names:
            # chdb sends nothing at all for an empty result, not even the header: ask for the columns
            described = client.query(f"DESCRIBE ({sql})").result_rows
            names = tuple(str(r[0]) for r in described)
            types = tuple(str(r[1]) for r in described)
        columns = tuple(Column(n, t) for n, t in zip(names, types, strict=True))
        return QueryResult(columns=columns, rows=rows)


class _TooManyRows(Exception):
    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.rows = rows


def _rows_hint(settings: ClickHouseSettings, found: str) -> str:
    return (
        f"The result is larger than the limit ({settings.max_result_rows} rows, {settings.max_result_bytes} "
        f"bytes; this one has {found}): aggregate, filter, or add a LIMIT."
    )
