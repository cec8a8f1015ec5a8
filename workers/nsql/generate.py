"""One NSQL question end to end, independent of the bus: prompt, ask, guard, run, and retry with the error.

:func:`answer` builds the prompt from the datasets' schemas, calls ``ask_model(messages)`` (the worker
implements it as a chat request over the bus, output constrained to ``{"sql": "..."}``), takes the SQL out
of the reply, guards it and runs it on the read-only readers (for SQL-only requests it is planned with
``EXPLAIN`` instead, never run). Any failure — no SQL, refused by the guard, a ClickHouse error, a limit —
is appended to the conversation (the model's reply, then the failed SQL and the error) and the model is
asked again, up to ``max_attempts`` times. The result is :class:`Answered` or :class:`Failed` (a 400 for the
client; with ``retryable=False`` when the engine itself failed and a retry could not help). Errors from
``ask_model`` itself are not caught: they are the caller's to map (503, 504, ...). The one exception is
:class:`ContextExceeded` on a retry: the conversation grew past the model's context with the failed
attempts, so the last failure is the answer (``context_exhausted``). On the first call it is the caller's
too: the question and its schema context alone do not fit, and asking again cannot change that.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import structlog

from services.config.model import ClickHouseSettings
from workers.nsql.clickhouse import QueryResult
from workers.nsql.context import Message, TableSchema, build_messages, retry_message
from workers.nsql.executor import Executor, QueryError
from workers.nsql.guard import Allowed, Refused, check

__all__ = (
    "REFUSED",
    "Answered",
    "AskModel",
    "Attempt",
    "ContextExceeded",
    "Failed",
    "answer",
    "extract_sql",
)

log = structlog.get_logger(__name__)

AskModel = Callable[[list[Message]], Awaitable[str]]

REFUSED = "refused"


class ContextExceeded(Exception):
    """What ``ask_model`` raises when the messages do not fit in the model's context: asking again only
    adds text, so answering stops."""


class Attempt(msgspec.Struct, frozen=True):
    """One failed try: the SQL the model gave (cleaned), why it failed, and the kind of failure:
    ``refused`` (the guard) or an :class:`~workers.nsql.executor.ErrorKind` value."""

    sql: str
    error: str
    kind: str


class Answered(msgspec.Struct, frozen=True, kw_only=True):
    """The validated SQL (as shown to users) and, unless SQL-only, its result."""

    sql: str
    executable: str
    result: QueryResult | None
    attempts: int
    failures: tuple[Attempt, ...] = ()
    outside_model_ms: float = 0.0  # prompt, guard and engine time, all attempts (the NSQL overhead)


class Failed(msgspec.Struct, frozen=True, kw_only=True):
    """No attempt produced a statement that passed and ran: ``reason`` is the last error."""

    reason: str
    last_sql: str | None
    attempts: int
    failures: tuple[Attempt, ...]
    retryable: bool = True
    context_exhausted: bool = False  # stopped early: the next attempt would not fit in the model's context
    outside_model_ms: float = 0.0


class _Reply(msgspec.Struct):
    sql: str


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_reply_decoder = msgspec.json.Decoder(_Reply)


def extract_sql(reply: str) -> str:
    """The SQL in a model reply: ``{"sql": "..."}`` (also inside prose or a code fence), else the reply
    itself as SQL text (fences and trailing semicolons are cleaned by the guard)."""
    text = reply.strip()
    candidates = [text]
    found = _JSON_OBJECT.search(text)
    if found and found.group(0) != text:
        candidates.append(found.group(0))
    for candidate in candidates:
        try:
            return _reply_decoder.decode(candidate).sql
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return text


async def answer(
    question: str,
    *,
    datasets: Sequence[TableSchema],
    executor: Executor,
    ask_model: AskModel,
    sql_only: bool = False,
    sample_data_enabled: bool = False,
    max_attempts: int = 3,
    max_context_datasets: int = 4,
) -> Answered | Failed:
    """Answer ``question`` from ``datasets`` (its prompt context and the only tables the SQL may read)."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    started = time.perf_counter()
    settings: ClickHouseSettings = executor.engine.settings
    allowed = {schema.name: schema.table for schema in datasets}
    messages = build_messages(
        question,
        datasets,
        sample_data_enabled=sample_data_enabled,
        max_rows=settings.max_result_rows,
        max_context_datasets=max_context_datasets,
    )
    failures: list[Attempt] = []
    last_sql: str | None = None
    model_s = 0.0

    def outside_ms() -> float:
        return round((time.perf_counter() - started - model_s) * 1000, 3)

    for attempt in range(1, max_attempts + 1):
        asked = time.perf_counter()
        try:
            reply = await ask_model(list(messages))
        except ContextExceeded:
            model_s += time.perf_counter() - asked
            if not failures:
                raise  # the question and its context alone do not fit: the caller's to report
            log.info("nsql.context_exhausted", attempt=attempt)
            return Failed(
                reason=failures[-1].error,
                last_sql=last_sql,
                attempts=attempt - 1,
                failures=tuple(failures),
                context_exhausted=True,
                outside_model_ms=outside_ms(),
            )
        model_s += time.perf_counter() - asked
        verdict = check(extract_sql(reply), allowed, max_chars=settings.max_sql_chars)
        last_sql = verdict.sql
        if isinstance(verdict, Refused):
            error, kind = f"The query was refused: {verdict.reason}.", REFUSED
        else:
            outcome = await _run(executor, verdict, sql_only=sql_only)
            if not isinstance(outcome, QueryError):
                log.info(
                    "nsql.answered",
                    attempts=attempt,
                    sql_only=sql_only,
                    rows=None if outcome is None else len(outcome.rows),
                    outside_model_ms=outside_ms(),
                )
                return Answered(
                    sql=verdict.sql,
                    executable=verdict.executable,
                    result=outcome,
                    attempts=attempt,
                    failures=tuple(failures),
                    outside_model_ms=outside_ms(),
                )
            error, kind = outcome.message, outcome.kind.value
            if not outcome.retryable:
                failures.append(Attempt(verdict.sql, error, kind))
                log.warning("nsql.engine_failed", attempts=attempt, error=error)
                return Failed(
                    reason=error,
                    last_sql=last_sql,
                    attempts=attempt,
                    failures=tuple(failures),
                    retryable=False,
                    outside_model_ms=outside_ms(),
                )
        failures.append(Attempt(verdict.sql, error, kind))
        log.info("nsql.attempt_failed", attempt=attempt, sql=verdict.sql, error=error)
        messages += [{"role": "assistant", "content": reply}, retry_message(verdict.sql, error)]
    return Failed(
        reason=failures[-1].error,
        last_sql=last_sql,
        attempts=max_attempts,
        failures=tuple(failures),
        outside_model_ms=outside_ms(),
    )


async def _run(executor: Executor, statement: Allowed, *, sql_only: bool) -> QueryResult | QueryError | None:
    if sql_only:
        return await executor.validate(statement)
    return await executor.execute(statement)
