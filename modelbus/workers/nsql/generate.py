"""One NSQL question end to end, independent of the bus: prompt, ask, guard, run, and retry with the error.

:func:`answer` builds the prompt from the datasets' schemas (:mod:`modelbus.workers.nsql.prompt`), calls
``ask_model(messages, temperature)`` (the worker implements it as a chat request over the bus, output
constrained to ``{"sql": "..."}``), takes the SQL out of the reply, pins clock functions to the data's
latest date (:mod:`modelbus.workers.nsql.anchor`), guards it and runs it on the read-only readers (for
SQL-only requests it is planned with ``EXPLAIN`` instead, never run).

A retry's first candidate is sampled at ``retry_temperature``: asked again at temperature 0 with the error
appended, a small model tends to write the same statement again.

With ``candidates > 1`` each attempt asks that many times at once (the first greedy, the others sampled),
checks and runs every candidate, and answers with the result most of them agree on
(:mod:`modelbus.workers.nsql.vote`). When every candidate of an attempt fails, the first one's failure (no
SQL, refused by the guard, a ClickHouse error, a limit) is appended to the conversation (the model's reply,
then the failed SQL and the error) and the model is asked again, up to ``max_attempts`` times.

The result is :class:`Answered` or :class:`Failed` (a 400 for the client; with ``retryable=False`` when
the engine itself failed and a retry could not help). Errors from ``ask_model`` itself are not caught: they
are the caller's to map (503, 504, ...). The one exception is :class:`ContextExceeded` on a retry: the
conversation grew past the model's context with the failed attempts, so the last failure is the answer
(``context_exhausted``). On the first call it is the caller's too: the question and its schema context
alone do not fit, and asking again cannot change that.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio
import msgspec
import structlog

from modelbus.config.model import ClickHouseSettings
from modelbus.runtime.clickhouse.engine import QueryResult
from modelbus.workers.nsql.anchor import pin_today
from modelbus.workers.nsql.context import Message, TableSchema
from modelbus.workers.nsql.executor import Executor, QueryError
from modelbus.workers.nsql.explain import explain
from modelbus.workers.nsql.guard import Allowed, Refused, check, clean_model_sql
from modelbus.workers.nsql.hints import hint
from modelbus.workers.nsql.prompt import anchor_date, build_messages, retry_message
from modelbus.workers.nsql.vote import tally

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


class AskModel(Protocol):
    """Ask the model for one reply to ``messages``, sampled at ``temperature`` (0: greedy)."""

    def __call__(self, messages: list[Message], *, temperature: float = 0.0) -> Awaitable[str]: ...


REFUSED = "refused"


class ContextExceeded(Exception):
    """What ``ask_model`` raises when the messages do not fit in the model's context: asking again only
    adds text, so answering stops."""


class Attempt(msgspec.Struct, frozen=True):
    """One failed try: the SQL the model gave (cleaned), why it failed, and the kind of failure:
    ``refused`` (the guard) or an :class:`~modelbus.workers.nsql.executor.ErrorKind` value."""

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
    explanation: str | None = None  # what the SQL computes, in one sentence


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


class _Tried(msgspec.Struct, frozen=True):
    """One candidate of an attempt: the model's reply, the guard's verdict, and what running it gave."""

    reply: str
    sql: str
    outcome: QueryResult | QueryError | Refused | None
    executable: str = ""

    @property
    def ran(self) -> bool:
        return not isinstance(self.outcome, (QueryError, Refused))


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
    candidates: int = 1,
    candidate_temperature: float = 0.7,
    retry_temperature: float = 0.0,
) -> Answered | Failed:
    """Answer ``question`` from ``datasets`` (its prompt context and the only tables the SQL may read)."""
    if max_attempts < 1 or candidates < 1:
        raise ValueError("max_attempts and candidates must be at least 1")
    started = time.perf_counter()
    settings: ClickHouseSettings = executor.engine.settings
    allowed = {schema.name: schema.table for schema in datasets}
    anchor = anchor_date(datasets)
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

    async def attempt_once(conversation: list[Message], temperature: float) -> _Tried:
        reply = await ask_model(list(conversation), temperature=temperature)
        sql = pin_today(clean_model_sql(extract_sql(reply)), anchor)
        verdict = check(sql, allowed, max_chars=settings.max_sql_chars)
        if isinstance(verdict, Refused):
            return _Tried(reply, verdict.sql, verdict)
        outcome = await _run(executor, verdict, sql_only=sql_only)
        return _Tried(reply, verdict.sql, outcome, verdict.executable)

    for attempt in range(1, max_attempts + 1):
        asked = time.perf_counter()
        first_temperature = 0.0 if attempt == 1 else retry_temperature  # greedy repeats its mistake
        temperatures = [first_temperature] + [candidate_temperature] * (candidates - 1)
        try:
            done = await _gather(attempt_once, messages, temperatures)
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
        ran = [t for t in done if t.ran]
        if ran:
            results = [_result(t) for t in ran]
            vote = tally(results)
            best, chosen = ran[vote.index], results[vote.index]
            log.info(
                "nsql.answered",
                attempts=attempt,
                sql_only=sql_only,
                candidates=len(done),
                agreeing=vote.agreeing,
                rows=None if chosen is None else len(chosen.rows),
                outside_model_ms=outside_ms(),
            )
            return Answered(
                sql=best.sql,
                executable=best.executable,
                result=chosen,
                attempts=attempt,
                explanation=explain(best.sql, anchor),
                failures=tuple(failures),
                outside_model_ms=outside_ms(),
            )
        first = done[0]
        last_sql = first.sql
        engine_down = next((t for t in done if _engine_failed(t)), None)
        if engine_down is not None:
            failed = _failure(engine_down)
            failures.append(failed)
            log.warning("nsql.engine_failed", attempts=attempt, error=failed.error)
            return Failed(
                reason=failed.error,
                last_sql=last_sql,
                attempts=attempt,
                failures=tuple(failures),
                retryable=False,
                outside_model_ms=outside_ms(),
            )
        failed = _failure(first)
        failures.append(failed)
        code = first.outcome.code if isinstance(first.outcome, QueryError) else None
        fix = hint(code, failed.error, datasets)
        log.info("nsql.attempt_failed", attempt=attempt, sql=first.sql, error=failed.error, hint=fix)
        messages += [
            {"role": "assistant", "content": first.reply},
            retry_message(first.sql, failed.error, fix),
        ]
    return Failed(
        reason=failures[-1].error,
        last_sql=last_sql,
        attempts=max_attempts,
        failures=tuple(failures),
        outside_model_ms=outside_ms(),
    )


async def _gather(
    attempt_once: Callable[[list[Message], float], Awaitable[_Tried]],
    messages: list[Message],
    temperatures: Sequence[float],
) -> list[_Tried]:
    """Every candidate of one attempt, asked at once, in the order of ``temperatures``.

    The first error of any candidate (the model unavailable, the context exceeded, ...) cancels the others
    and is raised as it is, as with one candidate."""
    tried: list[_Tried | None] = [None] * len(temperatures)
    failed: list[Exception] = []

    async with anyio.create_task_group() as tg:

        async def one(i: int, temperature: float) -> None:
            try:
                tried[i] = await attempt_once(messages, temperature)
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                failed.append(exc)
                tg.cancel_scope.cancel()

        for i, temperature in enumerate(temperatures):
            tg.start_soon(one, i, temperature)
    if failed:
        raise failed[0]
    return [t for t in tried if t is not None]


def _engine_failed(tried: _Tried) -> bool:
    return isinstance(tried.outcome, QueryError) and not tried.outcome.retryable


def _failure(tried: _Tried) -> Attempt:
    if isinstance(tried.outcome, Refused):
        return Attempt(tried.sql, f"The query was refused: {tried.outcome.reason}.", REFUSED)
    assert isinstance(tried.outcome, QueryError)
    return Attempt(tried.sql, tried.outcome.message, tried.outcome.kind.value)


def _result(tried: _Tried) -> QueryResult | None:
    return tried.outcome if isinstance(tried.outcome, QueryResult) else None


async def _run(executor: Executor, statement: Allowed, *, sql_only: bool) -> QueryResult | QueryError | None:
    if sql_only:
        return await executor.validate(statement)
    return await executor.execute(statement)
