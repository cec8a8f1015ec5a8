"""``POST /v1/chat/completions``: OpenAI's chat completions, answered by model workers over the bus.

The request is validated here (the OpenAI shape, the model known and ready), queued on the model's work
queue, and answered from the worker's replies: one JSON body, or server-sent events ending with
``data: [DONE]``. A client that goes away cancels the work.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from functools import partial
from typing import Annotated, Any

import anyio
import msgspec
import structlog
from litestar import MediaType, Request, Response, Router, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Schema
from litestar.openapi.spec.security_requirement import SecurityRequirement
from litestar.params import Body
from litestar.response import Stream
from litestar.types import Receive, Scope

from modelbus.config import ChatSettings
from modelbus.ingress.chat_jobs import chat_job_errors, first_reply
from modelbus.ingress.errors import error_body
from modelbus.ingress.load_balance import LoadBalancer
from modelbus.ingress.model_watch import check_chat_model, check_model, give_up_when_failed
from modelbus.ingress.openapi import operation_with_content, sse_media_type
from modelbus.ingress.request_task import RequestTask
from modelbus.ingress.scope_headers import header
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.ids import unique_hex
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.summaries import chat_input
from modelbus.runtime.work_queue.client import Pending, WorkQueueClient
from modelbus.runtime.work_queue.errors import BusFailure, ReplyLost
from modelbus.schemas.chat import CHAT, ChatChunk, ChatEnd, ChatFailure, ChatReply, ChatRequest, ChatResult
from modelbus.schemas.openai import ChatCompletionRequest

__all__ = ("SSE_HEADERS", "ChatCompletions", "chat_router")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
PROGRESS_HEADER = "x-spiceai-completion-progress"  # `enabled`: a tools model's stream shows its tool calls
ChatBody = Annotated[ChatCompletionRequest, Body(description="OpenAI's chat completion request")]
_COMPLETION_CONTENT = {
    MediaType.JSON.value: OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.OBJECT,
            description="OpenAI's `chat.completion` object, as the provider answered it",
            required=["id", "object", "created", "model", "choices"],
            properties={
                "id": Schema(type=OpenAPIType.STRING),
                "object": Schema(type=OpenAPIType.STRING, const="chat.completion"),
                "created": Schema(type=OpenAPIType.INTEGER),
                "model": Schema(type=OpenAPIType.STRING),
                "choices": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
                "usage": Schema(type=OpenAPIType.OBJECT),
            },
        )
    ),
    "text/event-stream": sse_media_type(
        "One server-sent event (`stream: true`): a `chat.completion.chunk` as JSON in "
        "`data`, the last one `[DONE]`; a failure after the first chunk is an `error` event with the "
        "error shape."
    ),
}


def _sse_error(status: int, message: str, code: str, type_: str = "server_error") -> bytes:
    body = _encoder.encode(error_body(status, message, code=code, type_=type_))
    return b"event: error\ndata: " + body + b"\n\n"


async def _events(
    pending: Pending[ChatReply], first: ChatReply, task: RequestTask
) -> AsyncGenerator[bytes, None]:
    """SSE bytes from the worker's chunks; a failure after the first chunk is an error event, then the end."""
    complete = False
    status, code, message = 200, None, None  # what the history records: the stream's real outcome
    try:
        reply = first
        while True:
            if isinstance(reply, ChatChunk):
                items = [bytes(item) for item in reply.data]
                for item in items:
                    task.add_chunk(item)
                yield b"".join(b"data: " + item + b"\n\n" for item in items)
            elif isinstance(reply, ChatEnd):
                complete = True
                yield DONE
                return
            elif isinstance(reply, ChatFailure):
                complete = True
                status, code, message = reply.status, reply.code or "upstream_error", reply.message
                yield _sse_error(reply.status, reply.message, code, reply.error_type)
                return
            try:
                reply = await pending.next()
            except BusFailure as exc:
                complete = True
                lost = isinstance(exc, ReplyLost)
                status, code = exc.status, exc.code
                message = f"The stream was interrupted: {exc.message}" if lost else exc.message
                yield _sse_error(status, message, code)
                return
    finally:
        with anyio.CancelScope(shield=True):
            await pending.close(cancel=not complete)
            if not complete:
                status, code = 499, "client_closed"
            await task.finish(status, error_code=code, error_message=message)


class ChatCompletions:
    """The route's work, shared by its Litestar handler and the ingress's fast lane: check the model, queue
    the job, wait for its first reply (watching the client), and the stream's events after it."""

    def __init__(
        self, views: ModelViewStore, client: WorkQueueClient, settings: ChatSettings, recorder: TaskRecorder,
        *, embedding_models: frozenset[str] = frozenset(), balancer: LoadBalancer | None = None,
    ) -> None:  # fmt: skip
        self.views = views
        self.client = client
        self.settings = settings
        self.recorder = recorder
        self.embedding_models = embedding_models
        self.balancer = balancer  # Spice's load-balancing workers: names answered by their members

    def task(self, scope: Scope, data: ChatCompletionRequest) -> RequestTask:
        """The request's span (and its model, for the metrics)."""
        task = RequestTask(
            self.recorder,
            scope,
            task="chat_stream" if data.stream else "chat",
            model=data.model if self.views.get(data.model) is not None else "",  # never a made-up name
            input=chat_input(data.messages) if self.recorder.keeps_text else None,
        )
        task.state["model"] = data.model
        progress = header(scope, PROGRESS_HEADER.encode())
        task.state[PROGRESS_HEADER] = progress is not None and progress.strip().lower() == b"enabled"
        return task

    async def start(
        self, data: ChatCompletionRequest, body: bytes, task: RequestTask, receive: Receive
    ) -> tuple[Pending[ChatReply], ChatReply] | None:
        """The job's first reply (a result closes the job; a chunk leaves it open for the stream), or None
        when the client left first. A refusal or failure is raised as the client's error. A load-balancing
        worker's name is answered by the first of its members that answers."""
        balancer = self.balancer
        if balancer is not None and data.model in balancer:
            check_model(self.views, data.model)
            _member, started = await balancer.first_answer(
                data.model, lambda member: self._start(member, data, body, task, receive)
            )
            return started
        check_chat_model(self.views, data.model, self.embedding_models)
        return await self._start(data.model, data, body, task, receive)

    async def _start(
        self, model: str, data: ChatCompletionRequest, body: bytes, task: RequestTask, receive: Receive
    ) -> tuple[Pending[ChatReply], ChatReply] | None:
        stream = bool(data.stream)
        include_usage = bool(stream and data.stream_options and data.stream_options.include_usage)
        # the bus id is always ours: a client's x-request-id may repeat or hold characters subjects can't
        request_id = task.request_id = unique_hex()
        structlog.contextvars.bind_contextvars(bus_request_id=request_id)
        job = ChatRequest(
            request_id=request_id,
            model=model,
            body=msgspec.Raw(body),
            stream=stream,
            include_usage=include_usage,
            traceparent=task.traceparent,
            progress=bool(task.state.get(PROGRESS_HEADER)),
        )
        give_up = give_up_when_failed(self.views, model, grace=self.settings.error_grace)
        pending = await self.client.submit(CHAT, job, queue=model, give_up=give_up)
        first = await first_reply(receive, pending)
        return None if first is None else (pending, first)

    events = staticmethod(_events)


def chat_router(chat: ChatCompletions, *, security: list[SecurityRequirement] | None) -> Router:
    errors = chat_job_errors(security)

    @post(
        "/chat/completions",
        summary="Create a chat completion (OpenAI-compatible, streaming included)",
        description="A `chat.completion` object as JSON, or with `stream: true` server-sent events: one "
        "`chat.completion.chunk` per `data:` line, then `data: [DONE]`.",
        status_code=200,
        security=security,
        responses=errors,
        operation_class=operation_with_content({"200": _COMPLETION_CONTENT}),
    )
    async def create_chat_completion(request: Request[Any, Any, Any], data: ChatBody) -> Response[Any]:
        task = chat.task(request.scope, data)
        return await task.around(partial(_complete, request, data, task))

    async def _complete(
        request: Request[Any, Any, Any], data: ChatCompletionRequest, task: RequestTask
    ) -> Response[Any]:
        started = await chat.start(data, await request.body(), task, request.receive)
        if started is None:  # the client left; nobody will read a response
            return Response(content=b"", status_code=499)
        pending, first = started
        if isinstance(first, ChatResult):
            data_bytes = bytes(first.data)
            task.add_completion(data_bytes)
            return Response(content=data_bytes, media_type=MediaType.JSON)
        return Stream(chat.events(pending, first, task), media_type="text/event-stream", headers=SSE_HEADERS)

    return Router(path="/v1", route_handlers=[create_chat_completion])
