"""The tool loop of a model with runtime tools (``params.tools``): Spice's ``ToolUsingChat``, over the bus.

- Before the first turn ``list_datasets`` and ``table_schema`` run, and the system message says what they
  answered, so even a small model knows its tables and columns.
- The model is offered the runtime tools (beside any the client sent). Each turn is one whole completion;
  each call it makes to a runtime tool runs on the bus, one :data:`~modelbus.schemas.tools.TOOL` job (an
  NSQL worker reads the datasets), and its result goes back to the model as a ``tool`` message.
- At most ``tool_recursion_limit`` turns may call tools; the turn after them is offered none, so it
  answers. So is a turn after one that only repeats calls already run, or that ends with nothing (small
  models do both). A local model's query written in its answer (a fenced ``sql`` block) is read as its
  ``sql`` call.
- The answer is the first turn that calls no runtime tool. It goes to the client as it is (a call of the
  client's own tools included), with the usage of every turn added up, as one result or as a stream's
  chunks. ``tool_choice: "none"`` from the client turns the runtime tools off.

Every call is a ``tool_use::<name>`` span, a child of the job's. With ``x-spiceai-completion-progress:
enabled`` a stream carries Spice's progress chunks (empty ``id`` and ``model``) while the tools run. While
a job waits for its tools it lends its slot (:attr:`ModelState.lent`): the generation slot is idle, and an
``nsql`` call asks this very model for its SQL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client

from modelbus.config import ModelConfig, QueueSettings
from modelbus.runtime.ids import unique_hex
from modelbus.runtime.nsql_presence import NsqlPresence
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.span import TaskSpan
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.runtime.work_queue.consumer import Job
from modelbus.runtime.work_queue.errors import BusFailure
from modelbus.schemas.chat import ChatRequest
from modelbus.schemas.tools import TOOL, ToolFailure, ToolRequest, ToolResult, tool_definitions
from modelbus.workers.model.providers.base import ChatCall, Provider, ProviderError
from modelbus.workers.model.providers.tool_calls import offered_tools
from modelbus.workers.model.state import ModelState

__all__ = ("ToolLoop", "sql_written_in", "uses_runtime_tools")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])
_decoder_any = msgspec.json.Decoder(list[Any])
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
PROGRESS_PREFIX = "!---jsonl"  # how Spice marks a progress chunk's content
DATASETS_PROMPT = (
    "You answer questions about data by calling the tools. The tables you may query with the `sql` tool "
    "(ClickHouse SQL) are:\n{tables}\nCall a tool to get the data, then answer the question from its result "
    "in one or two sentences."
)


def uses_runtime_tools(model: ModelConfig, body: dict[str, Any]) -> bool:
    return bool(model.params.tools) and body.get("tool_choice") != "none"


class ToolLoop:
    """Answers a tools model's chat jobs: turns of the model, and its runtime tool calls on the bus."""

    def __init__(
        self, provider: Provider, model: ModelConfig, *, client: WorkQueueClient, nc: Client,
        recorder: TaskRecorder, settings: QueueSettings,
    ) -> None:  # fmt: skip
        self.provider = provider
        self.state: ModelState = provider.state
        self.model = model
        self.client = client
        self.recorder = recorder
        self.settings = settings
        self.runtime_tools = model.params.tools
        self.nsql = NsqlPresence(nc)

    async def answer(
        self, job: Job[ChatRequest], body: dict[str, Any], emit: Callable[[bytes], Awaitable[None]]
    ) -> dict[str, Any]:
        """The final completion (with the usage of every turn); progress chunks go to ``emit`` (streams)."""
        request = job.request
        client_tools = set(offered_tools(body))
        runtime = tuple(t for t in self.runtime_tools if t not in client_tools)
        messages = list(body["messages"])
        usage: dict[str, int] = {}
        notify = emit if request.progress and request.stream else None  # Spice's progress chunks
        nsql_present = await self.nsql.ready()
        if nsql_present:
            await self._describe_datasets(job, runtime, messages, notify)
        asked: set[tuple[str, str]] = set()  # the calls run so far
        repeated = False
        for turn in range(self.model.params.tool_recursion_limit + 1):
            last = repeated or turn == self.model.params.tool_recursion_limit
            offered = () if last else runtime
            completion = await self._turn(request, body, messages, offered, first=turn == 0)
            _add_usage(usage, completion.get("usage"))
            choice = (completion.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            own = message.get("tool_calls") or []
            calls = [c for c in own if _name(c) in offered]
            client_calls = [c for c in own if _name(c) not in offered]
            if not own and "sql" in offered and self.model.provider == "local":
                calls = sql_written_in(message)
            if not last and asked and not own and not (message.get("content") or "").strip():
                # a small model that has used tools sometimes ends with nothing: asked to answer from what it
                # has, without tools, it does
                repeated = True
                continue
            if client_calls or not calls:
                if calls:  # the client's own calls go to the client; it cannot answer ours
                    message["tool_calls"] = client_calls
                if usage:
                    completion["usage"] = usage
                return completion
            if all((_name(c), _arguments(c)) in asked for c in calls):
                # a small model asks again for what it already has: it is answered, without tools, instead
                repeated = True
                continue
            asked.update((_name(c), _arguments(c)) for c in calls)
            messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
            for call in calls:
                _status, content = await self._call(
                    job, _name(call), _arguments(call), str(call.get("id", "")), notify,
                    nsql_present=nsql_present,
                )  # fmt: skip
                messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": content})
        raise AssertionError("unreachable: the last turn is offered no runtime tools")

    async def _describe_datasets(
        self, job: Job[ChatRequest], runtime: tuple[str, ...], messages: list[Any],
        emit: Callable[[bytes], Awaitable[None]] | None,
    ) -> None:  # fmt: skip
        """Before the first turn, ``list_datasets`` and ``table_schema`` run (as calls, with their spans) and
        what they answer is said in the system message: the tables, their descriptions and columns, and
        that the tools are how to read them.

        Spice instead puts a made-up ``list_datasets`` call and its result into the conversation. With the
        small local model that made it stop calling tools and write SQL as text (0 of 6 questions right);
        told in the system message, it calls them (5 of 6; docs/benchmarks.md)."""
        if "list_datasets" not in runtime:
            return
        status, content = await self._call(
            job, "list_datasets", "{}", "initial_list_datasets", emit, nsql_present=True
        )
        listed = [d for d in _listed(content) if isinstance(d, dict)] if status < 400 else []
        if not listed:
            return
        schemas: dict[Any, Any] = {}
        if "table_schema" in runtime:
            arguments = _encoder.encode({"tables": [d.get("name") for d in listed]}).decode()
            status, content = await self._call(
                job, "table_schema", arguments, "initial_table_schema", emit, nsql_present=True
            )
            if status < 400:
                schemas = {t.get("name"): t for t in _listed(content) if isinstance(t, dict)}
        text = DATASETS_PROMPT.format(
            tables="\n".join(_table_line(d, schemas.get(d.get("name"))) for d in listed)
        )
        first = messages[0] if messages else {}
        if first.get("role") == "system" and isinstance(first.get("content"), str):
            messages[0] = {**first, "content": f"{first['content']}\n\n{text}"}
        else:
            messages.insert(0, {"role": "system", "content": text})

    async def _turn(
        self, request: ChatRequest, body: dict[str, Any], messages: list[Any], offered: tuple[str, ...],
        *, first: bool,
    ) -> dict[str, Any]:  # fmt: skip
        """One whole completion of the conversation so far, offered the client's tools and ``offered``.

        A ``tool_choice`` that requires a call (``required``, or a named function) holds for the first
        turn only: in a loop, a model that must call a tool on every turn could never answer."""
        tools = [*(body.get("tools") or []), *tool_definitions(offered)]
        turn = {**body, "messages": messages}
        turn.pop("stream_options", None)
        if not first and turn.get("tool_choice") not in (None, "auto", "none"):
            del turn["tool_choice"]
        if tools:
            turn["tools"] = tools
        else:
            turn.pop("tools", None)
            turn.pop("tool_choice", None)
        call = ChatCall(request_id=request.request_id, body=turn, deadline=request.deadline)
        data = await self.provider.complete(call)
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ProviderError(502, f"the model's answer is not JSON: {exc}") from exc

    async def _call(
        self, job: Job[ChatRequest], name: str, arguments: str, call_id: str,
        emit: Callable[[bytes], Awaitable[None]] | None, *, nsql_present: bool,
    ) -> tuple[int, str]:  # fmt: skip
        """One runtime tool call, as its ``tool_use::<name>`` span: its status, and its result or why it
        failed (the model reads either); its progress chunks before and after when ``emit`` is given."""
        if emit is not None:
            await emit(_progress("log", call_id, f"Calling '{name}' tool", arguments))
        span = TaskSpan(
            self.recorder, task=f"tool_use::{name}", traceparent=job.span.traceparent, model=self.model.name,
            request_id=job.request.request_id, input=arguments if self.recorder.keeps_text else None,
        )  # fmt: skip
        status, code, content = 200, None, ""
        self.state.lent += 1
        try:
            if not nsql_present:
                status, code = 503, "nsql_unavailable"
                content = _error("no NSQL worker is running, so the datasets cannot be read now")
            else:
                status, code, content = await self._run(job, span, name, arguments)
        finally:
            self.state.lent -= 1
            span.add_output(content)
            with anyio.CancelScope(shield=True):
                await span.finish(status, error_code=code, error_message=content if status >= 400 else None)
        if emit is not None:
            how, kind = ("successfully", "log") if status < 400 else ("unsuccessfully", "err")
            await emit(_progress(kind, call_id, f"'{name}' tool completed {how}", content[:1000]))
        return status, content

    async def _run(
        self, job: Job[ChatRequest], span: TaskSpan, name: str, arguments: str
    ) -> tuple[int, str | None, str]:
        request = ToolRequest(
            request_id=unique_hex(), tool=name, arguments=arguments, model=self.model.name,
            datasets=self.model.datasets, traceparent=span.traceparent,
        )  # fmt: skip
        remaining = min(job.request.deadline - time.time(), self.settings.request_timeout)
        answered = False
        try:
            pending = await self.client.submit(TOOL, request, timeout=max(remaining, 0.001))
            try:
                reply = await pending.next()
                answered = True
            finally:
                with anyio.CancelScope(shield=True):
                    await pending.close(cancel=not answered)
        except BusFailure as exc:
            return exc.status, exc.code, _error(f"the tool could not run: {exc.message}")
        if isinstance(reply, ToolFailure):
            return reply.status, reply.code, _error(f"the tool failed: {reply.message}")
        assert isinstance(reply, ToolResult)
        if reply.rows is not None:
            span.labels["rows"] = str(reply.rows)
        return (400, "tool_error", reply.content) if reply.is_error else (200, None, reply.content)


def _name(call: dict[str, Any]) -> str:
    function = call.get("function")
    return str(function.get("name", "")) if isinstance(function, dict) else ""


def _arguments(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments") if isinstance(function, dict) else None
    return arguments if isinstance(arguments, str) else _encoder.encode(arguments or {}).decode()


_SQL_FENCE = re.compile(r"```(?:sql|clickhouse)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_SELECT = re.compile(r"\s*(select|with)\b", re.IGNORECASE)


def sql_written_in(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A small local model often writes the query it means to run in its answer, in a fenced block,
    instead of calling the ``sql`` tool: that block, as the call (the first SELECT only)."""
    for block in _SQL_FENCE.findall(message.get("content") or ""):
        if _SELECT.match(block):
            arguments = _encoder.encode({"query": block.strip().rstrip(";").strip()}).decode()
            return [{"id": f"call_{unique_hex()[:24]}", "type": "function",
                     "function": {"name": "sql", "arguments": arguments}}]  # fmt: skip
    return []


def _table_line(dataset: dict[str, Any], schema: Any) -> str:
    """One dataset in the system message: its name, description and columns (with their types)."""
    line = f"- {dataset.get('name')}"
    if dataset.get("description"):
        line += f": {dataset['description']}"
    columns = schema.get("columns") if isinstance(schema, dict) else None
    if columns:
        line += " Columns: " + ", ".join(_column(c) for c in columns if isinstance(c, dict)) + "."
    return line


def _column(column: dict[str, Any]) -> str:
    note = f"; {column['note']}" if column.get("note") else ""
    return f"{column.get('name')} ({column.get('type')}{note})"


def _listed(content: str) -> list[Any]:
    try:
        return _decoder_any.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def _add_usage(total: dict[str, int], usage: Any) -> None:
    if isinstance(usage, dict):
        for key in _USAGE_KEYS:
            value = usage.get(key)
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value


def _error(message: str) -> str:
    return _encoder.encode({"error": message}).decode()


def _progress(kind: str, call_id: str, title: str, content: str) -> bytes:
    """Spice's progress chunk: a ``chat.completion.chunk`` with an empty id and model whose content is
    ``!---jsonl`` and one JSON object (``type`` log or err, the call's ``id``, a ``title``, ``content``)."""
    event = _encoder.encode({"type": kind, "id": call_id, "title": title, "content": content}).decode()
    delta = {"role": "assistant", "content": PROGRESS_PREFIX + event}
    return _encoder.encode({
        "id": "", "object": "chat.completion.chunk", "created": int(time.time()), "model": "",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    })  # fmt: skip
