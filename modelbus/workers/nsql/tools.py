"""Runtime tool calls (``params.tools``), run by the NSQL worker over the datasets the calling model may read.

One job is one call (:mod:`modelbus.schemas.tools`): ``list_datasets`` and ``table_schema`` answer from the
schemas read at start; ``sample_data`` and ``sql`` run a statement through the same guard and read-only,
limited readers as NSQL; ``nsql`` answers a question the way ``POST /v1/nsql`` does (asking the calling model
for the SQL over the bus). Anything the model did wrong (arguments that do not decode, SQL the guard
refuses or ClickHouse rejects, a dataset it may not read) is a result with ``is_error``, in words the model
can act on: it reads them and tries again. At most :data:`MAX_RESULT_ROWS` rows go back to the model.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from modelbus.runtime.work_queue.consumer import Job
from modelbus.schemas.nsql import NsqlRequest, ResponseFormat
from modelbus.schemas.tools import MAX_SAMPLE_ROWS, TOOL_FUNCTIONS, ToolRequest, ToolResult
from modelbus.workers.nsql.context import TableSchema
from modelbus.workers.nsql.executor import Executor, QueryError
from modelbus.workers.nsql.formats import json_rows
from modelbus.workers.nsql.guard import Refused, check
from modelbus.workers.nsql.handler import NsqlHandler
from modelbus.workers.nsql.model_client import BusModel
from modelbus.workers.nsql.prompt import column_note

__all__ = ("MAX_RESULT_ROWS", "ToolHandler")

T = TypeVar("T")
MAX_RESULT_ROWS = 50  # rows of a result the model reads (it is told how many there were)
_encoder = msgspec.json.Encoder()


class _Misuse(Exception):
    """The call cannot run as the model wrote it; the message tells the model why."""


class _Tables(msgspec.Struct):
    tables: list[str]


class _Sample(msgspec.Struct):
    dataset: str
    limit: int = 3


class _Query(msgspec.Struct):
    query: str


class ToolHandler:
    """The tool calls an NSQL worker answers (a :class:`~modelbus.runtime.work_queue.consumer.JobHandler`)."""

    def __init__(self, nsql: NsqlHandler, executor: Executor) -> None:
        self.nsql = nsql
        self.executor = executor
        self.calls: collections.Counter[str] = collections.Counter()  # calls run, by tool

    def describe(self, request: ToolRequest) -> Mapping[str, Any]:
        return {"model": request.model, "tool": request.tool, "arguments_chars": len(request.arguments)}

    def done(self, job: Job[ToolRequest], seconds: float) -> None:
        self.calls[job.request.tool] += 1

    async def handle(self, job: Job[ToolRequest]) -> None:
        request = job.request
        job.span.labels["tool"] = request.tool
        job.span.input = request.arguments
        try:
            content, rows = await self._run(request, job)
            result = ToolResult(**job.stamp(), content=content, rows=rows)
        except _Misuse as exc:
            result = ToolResult(
                **job.stamp(), content=_encoder.encode({"error": str(exc)}).decode(), is_error=True
            )
            job.span.labels["tool_error"] = str(exc)[:200]
        job.log.update(is_error=result.is_error, rows=result.rows)
        job.span.add_output(result.content)
        await job.send(result)

    def _readable(self, request: ToolRequest) -> dict[str, TableSchema]:
        names = request.datasets or tuple(self.nsql.schemas)
        return {n: self.nsql.schemas[n] for n in names if n in self.nsql.schemas}

    async def _run(self, request: ToolRequest, job: Job[ToolRequest]) -> tuple[str, int | None]:
        if request.tool not in TOOL_FUNCTIONS:
            raise _Misuse(f"there is no tool `{request.tool}`; the tools: {', '.join(TOOL_FUNCTIONS)}")
        readable = self._readable(request)
        if request.tool == "list_datasets":
            listed = [{"name": s.name, "description": s.description or ""} for s in readable.values()]
            return _encoder.encode(listed).decode(), None
        if request.tool == "table_schema":
            tables = _arguments(request, _Tables).tables
            return _encoder.encode([_schema(_dataset(readable, t)) for t in tables]).decode(), None
        if request.tool == "sample_data":
            sample = _arguments(request, _Sample)
            schema = _dataset(readable, sample.dataset)
            limit = max(1, min(sample.limit, MAX_SAMPLE_ROWS))
            return await self._sql(f'SELECT * FROM "{schema.name}" LIMIT {limit}', readable)  # noqa: S608
        query = _arguments(request, _Query).query
        if request.tool == "sql":
            return await self._sql(query, readable)
        return await self._nsql(query, request, readable, job)

    async def _sql(self, sql: str, readable: Mapping[str, TableSchema]) -> tuple[str, int]:
        verdict = check(
            sql, {n: s.table for n, s in readable.items()},
            max_chars=self.executor.engine.settings.max_sql_chars,
        )  # fmt: skip
        if isinstance(verdict, Refused):
            raise _Misuse(f"the query was refused: {verdict.reason}")
        result = await self.executor.execute(verdict)
        if isinstance(result, QueryError):
            raise _Misuse(f"the query failed: {result.message}")
        rows = json_rows(result)
        return _rows_content(rows, sql=verdict.sql), len(rows)

    async def _nsql(
        self, question: str, request: ToolRequest, readable: Mapping[str, TableSchema], job: Job[ToolRequest]
    ) -> tuple[str, int]:
        nsql_request = NsqlRequest(
            request_id=request.request_id, query=question, model=request.model,
            datasets=tuple(readable), format=ResponseFormat.JSON, deadline=request.deadline,
        )  # fmt: skip
        model = BusModel(
            self.nsql.client, model=request.model, deadline=request.deadline,
            traceparent=job.span.traceparent, max_tokens=self.nsql.settings.max_sql_tokens,
        )  # fmt: skip
        handled = await self.nsql.answer(nsql_request, model)
        reply = handled.reply
        if reply.status != 200:
            raise _Misuse(f"the question could not be answered: {reply.error_message}")
        rows: list[Any] = msgspec.json.decode(reply.body)
        return _rows_content(rows, sql=reply.sql), len(rows)


def _arguments(request: ToolRequest, shape: type[T]) -> T:
    try:
        return msgspec.json.decode(request.arguments or "{}", type=shape)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        schema = _encoder.encode(TOOL_FUNCTIONS[request.tool]["parameters"]).decode()
        raise _Misuse(f"the arguments do not fit the tool ({exc}); its parameters: {schema}") from exc


def _dataset(readable: Mapping[str, TableSchema], name: str) -> TableSchema:
    schema = readable.get(name)
    if schema is None:
        raise _Misuse(f"there is no dataset `{name}` you may read; the datasets: {', '.join(readable)}")
    return schema


def _schema(schema: TableSchema) -> dict[str, Any]:
    """A dataset's columns, each with what the NSQL prompt says of it (its values, its date range, ...)."""
    columns = []
    for c in schema.columns:
        column = {"name": c.name, "type": c.type}
        if note := column_note(schema, c.name, c.comment):
            column["note"] = note
        columns.append(column)
    return {"name": schema.name, "description": schema.description or "", "columns": columns}


def _rows_content(rows: list[Any], *, sql: str | None) -> str:
    """The rows the model reads: at most MAX_RESULT_ROWS, saying how many there were."""
    shown = rows[:MAX_RESULT_ROWS]
    content: dict[str, Any] = {"row_count": len(rows), "rows": shown}
    if sql:
        content["sql"] = sql
    if len(rows) > len(shown):
        content["note"] = f"only the first {len(shown)} of {len(rows)} rows are shown: aggregate or filter"
    return _encoder.encode(content).decode()
