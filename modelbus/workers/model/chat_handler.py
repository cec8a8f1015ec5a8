"""How a model worker answers one chat job: the provider's completion or stream, as chat replies.

The job's life on the bus (commit at the first reply, keep-alives, cancellation, the log line and the span)
is the runtime's :class:`~modelbus.runtime.work_queue.consumer.JobConsumer`; this is what is chat's own: the
model's defaults and system prompt, the provider call, chunks produced together sent together, and the
model's counters (``$SRV.STATS``). A ``responses`` job (``POST /v1/responses``) is answered the same way,
adapted onto chat completions (:mod:`modelbus.workers.model.responses`) or passed through to an upstream
that serves the Responses API itself (``params.responses_api: native``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from modelbus.config import ModelConfig
from modelbus.runtime.tasks.summaries import chat_input
from modelbus.runtime.work_queue.consumer import Job
from modelbus.schemas.chat import ChatChunk, ChatEnd, ChatRequest, ChatResult
from modelbus.schemas.responses import MessageItem, ResponsesCall
from modelbus.schemas.status import ErrorInfo
from modelbus.workers.model.providers.base import ChatCall, Provider, ProviderError
from modelbus.workers.model.providers.usage import completion_as_stream
from modelbus.workers.model.responses import EventStream, chat_body, response_object
from modelbus.workers.model.state import ModelState
from modelbus.workers.model.tool_loop import ToolLoop, uses_runtime_tools

__all__ = ("ChatHandler", "prepare_body")

_body_decoder = msgspec.json.Decoder(dict[str, Any])
_call_decoder = msgspec.json.Decoder(ResponsesCall)
_encoder = msgspec.json.Encoder()


def prepare_body(model: ModelConfig, body: dict[str, Any]) -> dict[str, Any]:
    """Apply the model's configured defaults and system prompt; what the request says wins."""
    params = model.params
    merged = {**params.defaults, **body} if params.defaults else dict(body)
    if params.system_prompt:
        merged["messages"] = [{"role": "system", "content": params.system_prompt}, *merged["messages"]]
    return merged


class _Chunks:
    """A stream's chunks: those a provider yields without waiting go out together in one reply."""

    def __init__(self, job: Job[ChatRequest]) -> None:
        self._job = job
        self._pending: list[msgspec.Raw] = []
        self._flush_scheduled = False

    async def add(self, data: bytes) -> None:
        self._job.span.add_chunk(data)
        await self.add_event(data)

    async def add_event(self, data: bytes) -> None:
        """One item as it is (a chat chunk, or a Responses API event)."""
        await self._job.commit()  # the client sees output from now on: no other worker may answer
        self._pending.append(msgspec.Raw(data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._job.tg.start_soon(self.flush)

    async def flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        items, self._pending = self._pending, []
        await self._job.send(ChatChunk(**self._job.stamp(), data=items))


class ChatHandler:
    """The chat jobs of one hosted model."""

    def __init__(
        self,
        provider: Provider,
        model: ModelConfig,
        *,
        on_unhealthy: Callable[[ErrorInfo, str], None] = lambda _error, _message: None,
        tools: ToolLoop | None = None,
    ) -> None:
        self.provider = provider
        self.state: ModelState = provider.state
        self.model = model
        self.on_unhealthy = on_unhealthy
        self.tools = tools  # the tool loop of a model with runtime tools

    def describe(self, request: ChatRequest) -> Mapping[str, Any]:
        return {"model": request.model, "stream": request.stream}

    async def handle(self, job: Job[ChatRequest]) -> None:
        request = job.request
        self.state.requests += 1
        if request.stream:
            job.span.labels["stream"] = "true"
        if request.api == "responses":
            await self._respond(job)
            return
        try:
            body = prepare_body(self.model, _body_decoder.decode(request.body))
        except msgspec.DecodeError as exc:
            raise ProviderError(400, f"malformed request body: {exc}", type_="invalid_request_error") from exc
        if job.span.keeps_text:
            job.span.input = chat_input(body.get("messages") or [])
        call = ChatCall(
            request_id=request.request_id,
            body=body,
            include_usage=request.include_usage,
            deadline=request.deadline,
        )
        chunks = _Chunks(job)
        try:
            if self.tools is not None and uses_runtime_tools(self.model, body):
                await self._with_tools(job, self.tools, body, chunks)
                return
            if request.stream:
                await self.provider.stream(call, chunks.add)
            else:
                data = await self.provider.complete(call)
        except ProviderError as error:
            await chunks.flush()  # what came before the error goes before it
            if error.unhealthy is not None:
                self.on_unhealthy(error.unhealthy, error.message)
            raise
        if request.stream:
            await chunks.flush()
            await job.send(ChatEnd(**job.stamp()))
        else:
            job.span.add_completion(data)
            await job.send(ChatResult(**job.stamp(), data=msgspec.Raw(data)))

    async def _with_tools(
        self, job: Job[ChatRequest], tools: ToolLoop, body: dict[str, Any], chunks: _Chunks
    ) -> None:
        """The tool loop's answer: one result, or (``stream``) its progress and then the answer's chunks."""
        request = job.request
        job.span.labels["tools"] = ",".join(self.model.params.tools)
        completion = await tools.answer(job, body, chunks.add_event)
        data = _encoder.encode(completion)
        if not request.stream:
            job.span.add_completion(data)
            await job.send(ChatResult(**job.stamp(), data=msgspec.Raw(data)))
            return
        stream = completion_as_stream(completion, include_usage=request.include_usage, model=self.model.name)
        for chunk in stream:
            await chunks.add(chunk)
        await chunks.flush()
        await job.send(ChatEnd(**job.stamp()))

    async def _respond(self, job: Job[ChatRequest]) -> None:
        """A Responses API job: the response object, or its events (committed at the first one)."""
        request = job.request
        job.span.labels["api"] = "responses"
        try:
            call = _call_decoder.decode(request.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProviderError(
                400, f"malformed responses job: {exc}", type_="invalid_request_error"
            ) from exc
        native = self.model.params.responses_api == "native"
        respond = getattr(self.provider, "respond", None) if native else None
        body = _native_body(call) if respond is not None else prepare_body(self.model, chat_body(call))
        if job.span.keeps_text:
            job.span.input = _last_user_text(call)
        chat = ChatCall(
            request_id=request.request_id, body=body, include_usage=True, deadline=request.deadline
        )
        chunks = _Chunks(job)
        try:
            if respond is not None:
                await self._respond_native(job, call, chat, chunks)
            elif request.stream:
                await self._respond_stream(job, call, chat, chunks)
            else:
                data = await self.provider.complete(chat)
                job.span.add_completion(data)
                await job.send(ChatResult(**job.stamp(), data=msgspec.Raw(response_object(call, data))))
        except ProviderError as error:
            await chunks.flush()
            if error.unhealthy is not None:
                self.on_unhealthy(error.unhealthy, error.message)
            raise

    async def _respond_stream(
        self, job: Job[ChatRequest], call: ResponsesCall, chat: ChatCall, chunks: _Chunks
    ) -> None:
        events = EventStream(call)

        async def on_chunk(data: bytes) -> None:
            job.span.add_chunk(data)
            for event in events.chunk(data):  # the first event commits the job
                await chunks.add_event(event)

        await self.provider.stream(chat, on_chunk)
        closing, _response = events.finish()
        for event in closing:
            await chunks.add_event(event)
        await chunks.flush()
        await job.send(ChatEnd(**job.stamp()))

    async def _respond_native(
        self, job: Job[ChatRequest], call: ResponsesCall, chat: ChatCall, chunks: _Chunks
    ) -> None:
        """The upstream's own answer, with this response's id (the upstream keeps nothing: store false)."""
        provider: Any = self.provider
        if not job.request.stream:
            data = _with_id(await provider.respond(chat), call)
            job.span.add_output(_output_text(data))
            await job.send(ChatResult(**job.stamp(), data=msgspec.Raw(data)))
            return

        async def on_event(data: bytes) -> None:
            await chunks.add_event(_with_id(data, call))

        await provider.respond_stream(chat, on_event)
        await chunks.flush()
        await job.send(ChatEnd(**job.stamp()))

    def done(self, job: Job[ChatRequest], seconds: float) -> None:
        """The model's busy time, tokens and failures, for ``$SRV.STATS``."""
        self.state.count_job(job, seconds)


def _native_body(call: ResponsesCall) -> dict[str, Any]:
    """The request for an upstream that serves ``/responses``: the whole conversation, kept nowhere there."""
    body = {k: v for k, v in msgspec.to_builtins(call.request).items() if v is not None}
    body.pop("previous_response_id", None)  # the conversation is in ``input``: ids are this gateway's
    body["input"] = msgspec.to_builtins(call.input)
    body["store"] = False
    return body


def _with_id(data: bytes, call: ResponsesCall) -> bytes:
    """An upstream's response object (or an event carrying one) with this gateway's response id."""
    value = _body_decoder.decode(data)
    inner = value.get("response")
    target: dict[str, Any] = inner if isinstance(inner, dict) else value
    if target.get("object") == "response":
        target["id"] = call.id
        target["previous_response_id"] = call.request.previous_response_id
        target["store"] = call.request.store if call.request.store is not None else True
    return _encoder.encode(value)


def _output_text(data: bytes) -> str:
    value = _body_decoder.decode(data)
    return "".join(
        part.get("text", "")
        for item in value.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
    )


def _last_user_text(call: ResponsesCall) -> str:
    for item in reversed(call.input):
        if isinstance(item, MessageItem) and item.role == "user":
            content = item.content
            return content if isinstance(content, str) else " ".join(p.text for p in content)
    return ""
