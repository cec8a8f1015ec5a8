"""``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``: OpenAI's Responses API on every model.

A response is a chat job on its model's work queue (the same workers, capacity, failover, cancellation,
deadlines and errors as chat): the ingress checks the request (an unsupported field, item or tool is a 400
that names it), expands ``previous_response_id`` from the stored conversation, and sends a
:class:`~modelbus.schemas.responses.ResponsesCall`. The model worker answers with the response object, or
the typed events of ``stream: true``, which the ingress passes on as server-sent events (``event: <type>``).
With ``store`` (OpenAI's default) the finished response is kept (:mod:`modelbus.ingress.response_store`),
readable only with the key that made it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import anyio
import msgspec
import structlog
from litestar import MediaType, Request, Response, Router, delete, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Schema
from litestar.openapi.spec.security_requirement import SecurityRequirement
from litestar.params import Body, Parameter
from litestar.response import Stream

from modelbus.config import ChatSettings
from modelbus.ingress.auth import key_owner
from modelbus.ingress.chat_jobs import chat_job_errors, first_reply
from modelbus.ingress.errors import ApiError, error_spec
from modelbus.ingress.load_balance import LoadBalancer
from modelbus.ingress.model_watch import check_chat_model, check_model, give_up_when_failed
from modelbus.ingress.openapi import operation_with_content, sse_media_type
from modelbus.ingress.request_task import RequestTask
from modelbus.ingress.response_store import ResponseStore, new_response_id
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.ids import unique_hex
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.summaries import Usage
from modelbus.runtime.work_queue.client import Pending, WorkQueueClient
from modelbus.runtime.work_queue.errors import BusFailure
from modelbus.schemas.chat import CHAT, ChatChunk, ChatEnd, ChatFailure, ChatReply, ChatRequest, ChatResult
from modelbus.schemas.responses import (
    InputItem,
    RequestProblem,
    ResponsesCall,
    ResponsesRequest,
    StoredResponse,
    check_request,
    output_items,
)

__all__ = ("responses_router",)

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
_decode = msgspec.json.Decoder(dict[str, Any]).decode
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ResponsesBody = Annotated[ResponsesRequest, Body(description="OpenAI's Responses API request")]
ResponseId = Annotated[str, Parameter(description="The response's id (`resp_...`)")]
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class _EventType(msgspec.Struct):
    type: str = ""
    sequence_number: int = -1


_event_type = msgspec.json.Decoder(_EventType)
_RESPONSE_CONTENT = {
    MediaType.JSON.value: OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.OBJECT,
            description="OpenAI's `response` object",
            required=["id", "object", "created_at", "status", "model", "output"],
            properties={
                "id": Schema(type=OpenAPIType.STRING),
                "object": Schema(type=OpenAPIType.STRING, const="response"),
                "created_at": Schema(type=OpenAPIType.INTEGER),
                "status": Schema(type=OpenAPIType.STRING),
                "model": Schema(type=OpenAPIType.STRING),
                "output": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
                "usage": Schema(type=[OpenAPIType.OBJECT, OpenAPIType.NULL]),
                "error": Schema(type=[OpenAPIType.OBJECT, OpenAPIType.NULL]),
                "incomplete_details": Schema(type=[OpenAPIType.OBJECT, OpenAPIType.NULL]),
            },
        )
    ),
    "text/event-stream": sse_media_type(
        "With `stream: true`: OpenAI's typed events, `event: <type>` and its JSON in `data` (with "
        "`sequence_number`), from `response.created` to `response.completed`; a failure after the first "
        "event is an `error` event.",
        event_pattern=r"^(response\.[a-z_.]+|error)$",
    ),
}


def _problem(exc: RequestProblem) -> ApiError:
    return ApiError(400, exc.message, code="invalid_request", param=exc.param)


def _usage(response: dict[str, Any]) -> Usage | None:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(prompt_tokens=usage.get("input_tokens"), completion_tokens=usage.get("output_tokens"))


def _output_text(response: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in response.get("output") or []
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict)
    )


def _sse(kind: str, data: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(frozen=True)
class _Answer:
    """One response being answered: where it is stored, what was asked, its span, and whose it is."""

    store: ResponseStore
    call: ResponsesCall
    task: RequestTask
    owner: str

    async def finish(self, value: dict[str, Any], response: bytes) -> None:
        """What a finished response (``value``, and as JSON ``response``) leaves behind: its text and usage
        in the span, and its record."""
        self.task.add_output(_output_text(value))
        self.task.set_usage(_usage(value))
        if self.call.request.store is not False and value.get("status") in ("completed", "incomplete"):
            stored = StoredResponse(
                owner=self.owner, response=msgspec.Raw(response), input=self.call.input,
                output=output_items(value),
            )  # fmt: skip
            await self.store.put(self.call.id, stored)


async def _events(answer: _Answer, pending: Pending[ChatReply], first: ChatReply) -> AsyncIterator[bytes]:
    """The SSE bytes of the worker's events; a failure after the first is an ``error`` event, then the end."""
    complete = False
    status, code, message = 200, None, None
    last_seq = -1
    try:
        reply = first
        while True:
            if isinstance(reply, ChatChunk):
                out = []
                for item in reply.data:
                    data = bytes(item)
                    event = _event_type.decode(data)
                    last_seq = max(last_seq, event.sequence_number)
                    if event.type in _FINAL_EVENTS:
                        response = _decode(data).get("response") or {}
                        await answer.finish(response, msgspec.json.encode(response))
                    out.append(_sse(event.type, data))
                yield b"".join(out)
            elif isinstance(reply, ChatEnd):
                complete = True
                return
            elif isinstance(reply, ChatFailure):
                complete = True
                status, code, message = reply.status, reply.code or "upstream_error", reply.message
                break
            try:
                reply = await pending.next()
            except BusFailure as exc:
                complete = True
                status, code, message = exc.status, exc.code, exc.message
                break
        error = {"type": "error", "code": code, "message": message, "param": None,
                 "sequence_number": last_seq + 1}  # fmt: skip
        yield _sse("error", _encoder.encode(error))
    finally:
        with anyio.CancelScope(shield=True):
            await pending.close(cancel=not complete)
            if not complete:
                status, code = 499, "client_closed"
            await answer.task.finish(status, error_code=code, error_message=message)


def responses_router(
    views: ModelViewStore,
    client: WorkQueueClient,
    store: ResponseStore,
    settings: ChatSettings,
    recorder: TaskRecorder,
    *,
    security: list[SecurityRequirement] | None,
    embedding_models: frozenset[str] = frozenset(),
    balancer: LoadBalancer | None = None,
) -> Router:
    errors = chat_job_errors(security)
    errors[400] = error_spec("Malformed or unsupported request (the field, item or tool is named)")

    @post(
        "/responses",
        summary="Create a model response (OpenAI's Responses API, streaming included)",
        description="A `response` object as JSON, or with `stream: true` OpenAI's typed server-sent events.",
        status_code=200,
        security=security,
        responses=errors,
        operation_class=operation_with_content({"200": _RESPONSE_CONTENT}),
    )
    async def create_response(request: Request[Any, Any, Any], data: ResponsesBody) -> Response[Any]:
        request.state.model = data.model
        task = RequestTask(
            recorder, request.scope, task="ai_chat",
            model=data.model if views.get(data.model) is not None else "",
            input=data.input if isinstance(data.input, str) and recorder.keeps_text else None,
        )  # fmt: skip
        task.labels["api"] = "responses"
        if data.stream:
            task.labels["stream"] = "true"
        return await task.around(partial(_create, request, data, task))

    async def _create(
        request: Request[Any, Any, Any], data: ResponsesRequest, task: RequestTask
    ) -> Response[Any]:
        try:
            items, _tools = check_request(data)
        except RequestProblem as exc:
            raise _problem(exc) from exc
        grouped = balancer is not None and data.model in balancer
        if grouped:
            check_model(views, data.model)
        else:
            check_chat_model(views, data.model, embedding_models)
        owner = key_owner(request.state)
        history: list[InputItem] = []
        if data.previous_response_id:
            previous = await store.get(data.previous_response_id, owner)
            if previous is None:
                raise ApiError(
                    400, f"Previous response with id `{data.previous_response_id}` not found",
                    code="previous_response_not_found", param="previous_response_id",
                )  # fmt: skip
            history = [*previous.input, *previous.output]
        call = ResponsesCall(
            id=new_response_id(uuid.uuid4().hex), created_at=int(time.time()), request=data,
            input=[*history, *items],
        )  # fmt: skip
        answer = _Answer(store, call, task, owner)

        async def ask(model: str) -> tuple[Pending[ChatReply], ChatReply] | None:
            request_id = task.request_id = unique_hex()
            structlog.contextvars.bind_contextvars(bus_request_id=request_id)
            job = ChatRequest(
                request_id=request_id, model=model, body=msgspec.Raw(_encoder.encode(call)),
                stream=bool(data.stream), include_usage=True, traceparent=task.traceparent, api="responses",
            )  # fmt: skip
            give_up = give_up_when_failed(views, model, grace=settings.error_grace)
            pending = await client.submit(CHAT, job, queue=model, give_up=give_up)
            first = await first_reply(request.receive, pending)
            return None if first is None else (pending, first)

        if grouped and balancer is not None:
            started = (await balancer.first_answer(data.model, ask))[1]
        else:
            started = await ask(data.model)
        if started is None:  # the client left
            return Response(content=b"", status_code=499)
        pending, first = started
        if isinstance(first, ChatResult):
            raw = bytes(first.data)
            await answer.finish(_decode(raw), raw)
            return Response(content=raw, media_type=MediaType.JSON)
        return Stream(_events(answer, pending, first), media_type="text/event-stream", headers=SSE_HEADERS)

    @get(
        "/responses/{response_id:str}",
        summary="Retrieve a stored response",
        security=security,
        responses={
            404: error_spec("No such response (or not this key's)"),
            **({401: errors[401]} if security else {}),
        },
        operation_class=operation_with_content(
            {"200": {MediaType.JSON.value: _RESPONSE_CONTENT[MediaType.JSON.value]}}
        ),
    )
    async def get_response(request: Request[Any, Any, Any], response_id: ResponseId) -> Response[Any]:
        stored = await store.get(response_id, key_owner(request.state))
        if stored is None:
            raise ApiError(404, f"Response with id `{response_id}` not found", code="not_found")
        return Response(content=bytes(stored.response), media_type=MediaType.JSON)

    @delete(
        "/responses/{response_id:str}",
        summary="Delete a stored response",
        status_code=200,
        security=security,
        responses={
            404: error_spec("No such response (or not this key's)"),
            **({401: errors[401]} if security else {}),
        },
    )
    async def delete_response(request: Request[Any, Any, Any], response_id: ResponseId) -> dict[str, Any]:
        if not await store.delete(response_id, key_owner(request.state)):
            raise ApiError(404, f"Response with id `{response_id}` not found", code="not_found")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    return Router(path="/v1", route_handlers=[create_response, get_response, delete_response])
