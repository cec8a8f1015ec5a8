"""The tool loop of a model with runtime tools (``params.tools``): Spice's ``ToolUsingChat``, over the bus.

The model is offered the runtime tools (beside any the client sent). Each turn is one whole completion; the
calls it makes to runtime tools run on the bus, one :data:`~modelbus.schemas.tools.TOOL` job each (an NSQL
worker reads the datasets), their results go back to the model as ``tool`` messages, and the model is asked
again, for at most ``tool_recursion_limit`` turns that call tools; the turn after those is offered no
runtime tools, so it answers. The answer is the first turn that calls no runtime tool: it goes to the client
as it is (a call of the client's own tools included), with the usage of every turn added up, as one result
or as the chunks of a stream. ``tool_choice: "none"`` from the client turns the runtime tools off.

Every call is a ``tool_use::<name>`` span, a child of the job's. With ``x-spiceai-completion-progress:
enabled`` a stream carries Spice's progress chunks (empty ``id`` and ``model``, the progress text as the
content) while the tools run. While a job waits for its tools it lends its slot (:attr:`ModelState.lent`):
the generation slot is idle, and an ``nsql`` call asks this very model for its SQL.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client

from modelbus.config import ModelConfig, QueueSettings
from modelbus.runtime.ids import unique_hex
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.span import TaskSpan
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.runtime.work_queue.consumer import Job
from modelbus.runtime.work_queue.errors import BusFailure
from modelbus.schemas.chat import ChatRequest
from modelbus.schemas.subjects import NSQL_READY_SUBJECT
from modelbus.schemas.tools import TOOL, ToolFailure, ToolRequest, ToolResult, tool_definitions
from modelbus.workers.model.providers.base import ChatCall, Provider, ProviderError
from modelbus.workers.model.providers.tool_calls import offered_tools
from modelbus.workers.model.providers.usage import completion_as_chunks, usage_chunk
from modelbus.workers.model.state import ModelState

__all__ = ("ToolLoop", "final_chunks", "uses_runtime_tools")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
NSQL_PROBE_S = 2.0  # how long to wait for any NSQL worker to say it is ready
PROGRESS_PREFIX = "!---jsonl"  # how Spice marks a progress chunk's content


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
        self.nc = nc
        self.recorder = recorder
        self.settings = settings
        self.runtime_tools = model.params.tools

    async def answer(
        self, job: Job[ChatRequest], body: dict[str, Any], emit: Callable[[bytes], Awaitable[None]]
    ) -> dict[str, Any]:
        """The final completion (with the usage of every turn); progress chunks go to ``emit`` (streams)."""
        request = job.request
        client_tools = set(offered_tools(body))
        runtime = tuple(t for t in self.runtime_tools if t not in client_tools)
        messages = list(body["messages"])
        usage: dict[str, int] = {}
        nsql_present: bool | None = None
        progress = request.progress and request.stream
        for turn in range(self.model.params.tool_recursion_limit + 1):
            offered = runtime if turn < self.model.params.tool_recursion_limit else ()
            completion = await self._turn(request, body, messages, offered)
            _add_usage(usage, completion.get("usage"))
            choice = (completion.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            calls = [c for c in message.get("tool_calls") or [] if _name(c) in offered]
            if not calls or len(calls) != len(message.get("tool_calls") or []):
                if calls:  # the client's own calls go to the client; it cannot answer ours
                    message["tool_calls"] = [c for c in message["tool_calls"] if _name(c) not in offered]
                if usage:
                    completion["usage"] = usage
                return completion
            messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
            if nsql_present is None:
                nsql_present = await self._nsql_present()
            for call in calls:
                name, arguments, call_id = _name(call), _arguments(call), str(call.get("id", ""))
                if progress:
                    await emit(_progress("log", call_id, f"Calling '{name}' tool", arguments))
                status, content = await self._call(job, name, arguments, nsql_present=nsql_present)
                if progress:
                    how = "successfully" if status < 400 else "unsuccessfully"
                    kind = "log" if status < 400 else "err"
                    await emit(_progress(kind, call_id, f"'{name}' tool completed {how}", content[:1000]))
                messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        raise AssertionError("unreachable: the last turn is offered no runtime tools")

    async def _turn(
        self, request: ChatRequest, body: dict[str, Any], messages: list[Any], offered: tuple[str, ...]
    ) -> dict[str, Any]:
        tools = [*(body.get("tools") or []), *tool_definitions(offered)]
        turn = {**body, "messages": messages}
        turn.pop("stream_options", None)
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

    async def _nsql_present(self) -> bool:
        try:
            await self.nc.request(NSQL_READY_SUBJECT, b"", timeout=NSQL_PROBE_S)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False
        return True

    async def _call(
        self, job: Job[ChatRequest], name: str, arguments: str, *, nsql_present: bool
    ) -> tuple[int, str]:
        """One runtime tool call, as its ``tool_use::<name>`` span: its status, and its result or why it
        failed (the model reads either)."""
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


def final_chunks(completion: dict[str, Any], *, include_usage: bool, model: str) -> list[bytes]:
    """The stream that carries a tool loop's final completion."""
    chunks = completion_as_chunks(completion)
    if include_usage and completion.get("usage"):
        chunks.append(
            usage_chunk(completion.get("id", ""), model, completion["usage"], completion.get("created"))
        )
    return chunks


def _name(call: dict[str, Any]) -> str:
    function = call.get("function")
    return str(function.get("name", "")) if isinstance(function, dict) else ""


def _arguments(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments") if isinstance(function, dict) else None
    return arguments if isinstance(arguments, str) else _encoder.encode(arguments or {}).decode()


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
