"""How a model worker answers one chat job: the provider's completion or stream, as chat replies.

The job's life on the bus (commit at the first reply, keep-alives, cancellation, the log line and the span)
is the runtime's :class:`~modelbus.runtime.work_queue.consumer.JobConsumer`; this is what is chat's own: the
model's defaults and system prompt, the provider call, chunks produced together sent together, and the
model's counters (``$SRV.STATS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from modelbus.config import ModelConfig
from modelbus.runtime.tasks.summaries import chat_input
from modelbus.runtime.work_queue.consumer import Job
from modelbus.schemas.chat import ChatChunk, ChatEnd, ChatRequest, ChatResult
from modelbus.schemas.status import ErrorInfo
from modelbus.workers.model.providers.base import ChatCall, Provider, ProviderError
from modelbus.workers.model.state import ModelState

__all__ = ("ChatHandler", "prepare_body")

_body_decoder = msgspec.json.Decoder(dict[str, Any])


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
        await self._job.commit()  # the client sees output from now on: no other worker may answer
        self._job.span.add_chunk(data)
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
    ) -> None:
        self.provider = provider
        self.state: ModelState = provider.state
        self.model = model
        self.on_unhealthy = on_unhealthy

    def describe(self, request: ChatRequest) -> Mapping[str, Any]:
        return {"model": request.model, "stream": request.stream}

    async def handle(self, job: Job[ChatRequest]) -> None:
        request = job.request
        self.state.requests += 1
        if request.stream:
            job.span.labels["stream"] = "true"
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

    def done(self, job: Job[ChatRequest], seconds: float) -> None:
        """The model's busy time, tokens and failures, for ``$SRV.STATS``."""
        if job.status >= 400 and job.status != 499 and job.error_code != "worker_shutdown":
            self.state.failures += 1
        usage = job.span.usage
        self.state.count_answered(
            seconds,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
        )
