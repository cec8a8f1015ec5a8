"""``POST /v1/embeddings``: OpenAI's embeddings, answered by embedding workers over the bus.

The ingress validates and bounds the request (``runtime.embed.max_inputs`` inputs, ``max_tokens`` tokens
in all: a string counts one token per 4 bytes of UTF-8, an estimate the upstream refines; a token array its
length), refuses ``dimensions`` for a model that does not take it, and queues it on the model's work queue;
the worker batches it with other requests and answers OpenAI's ``list`` of embeddings.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Any

import anyio
import msgspec
import structlog
from litestar import MediaType, Request, Response, Router, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec.security_requirement import SecurityRequirement
from litestar.params import Body

from modelbus.config import Config
from modelbus.ingress.disconnect import unless_disconnected
from modelbus.ingress.errors import ApiError, error_spec
from modelbus.ingress.model_watch import check_model
from modelbus.ingress.request_task import RequestTask
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.ids import unique_hex
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.summaries import Usage
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.schemas.embeddings import EMBED, EmbeddingsRequest, EmbedFailure, EmbedRequest, EmbedResult

__all__ = ("embeddings_router", "estimated_tokens")

log = structlog.get_logger(__name__)
EmbeddingsBody = Annotated[EmbeddingsRequest, Body(description="OpenAI's embeddings request")]


class EmbeddingList(msgspec.Struct):
    """OpenAI's answer: ``data`` holds ``{object: embedding, index, embedding}`` (floats, or base64)."""

    object: str
    data: list[dict[str, Any]]
    model: str
    usage: dict[str, int]


def _inputs(value: str | list[Any]) -> list[str | list[int]]:
    """``input`` as a list of inputs: one string or one token array is one input; a mix is a 400."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]
    if any(isinstance(v, int) for v in value):
        raise ApiError(
            400, "`input` mixes token ids with strings or token arrays", code="invalid_value", param="input"
        )
    return list(value)


def estimated_tokens(inputs: list[Any]) -> int:
    """Tokens, estimated without the model's tokenizer: a string one per 4 bytes, a token array its length."""
    return sum(math.ceil(len(i.encode()) / 4) if isinstance(i, str) else len(i) for i in inputs)


def embeddings_router(
    config: Config,
    views: ModelViewStore,
    client: WorkQueueClient,
    recorder: TaskRecorder,
    *,
    security: list[SecurityRequirement] | None,
) -> Router:
    limits = config.runtime.embed
    errors = {
        400: error_spec(
            "Malformed request, too many inputs or tokens, or `dimensions` the model does not take"
        ),
        404: error_spec("Unknown embedding model"),
        413: error_spec("The request body is too large"),
        429: error_spec("The model's queue is full (see Retry-After)"),
        502: error_spec("The upstream provider failed"),
        503: error_spec("The model has no ready worker, or the bus is unavailable"),
        504: error_spec("The deadline passed"),
        200: ResponseSpec(
            EmbeddingList, description="The embeddings, in input order", generate_examples=False
        ),
    }
    if security:
        errors[401] = error_spec("Missing or invalid API key")

    @post(
        "/embeddings",
        summary="Create embeddings (OpenAI-compatible)",
        status_code=200,
        security=security,
        responses=errors,
    )
    async def create_embeddings(request: Request[Any, Any, Any], data: EmbeddingsBody) -> Response[Any]:
        request.state.model = data.model
        known = data.model if config.embedding(data.model) is not None else ""
        task = RequestTask(recorder, request.scope, task="text_embed", model=known, input=None)
        return await task.around(partial(_embed, request, data, task))

    async def _embed(
        request: Request[Any, Any, Any], data: EmbeddingsRequest, task: RequestTask
    ) -> Response[Any]:
        model = config.embedding(data.model)
        if model is None:
            names = ", ".join(e.name for e in config.embeddings) or "(none configured)"
            hint = " (it is a chat model)" if config.model(data.model) is not None else ""
            raise ApiError(
                404, f"The embedding model `{data.model}` does not exist{hint}; embedding models: {names}",
                code="model_not_found", param="model",
            )  # fmt: skip
        inputs = _inputs(data.input)
        if not inputs or any(isinstance(i, str | list) and not i for i in inputs):
            raise ApiError(400, "`input` must not be empty, nor hold an empty input", code="invalid_value",
                           param="input")  # fmt: skip
        if len(inputs) > limits.max_inputs:
            raise ApiError(
                400, f"{len(inputs)} inputs is more than {limits.max_inputs} (runtime.embed.max_inputs)",
                code="too_many_inputs", param="input",
            )  # fmt: skip
        tokens = estimated_tokens(inputs)
        if tokens > limits.max_tokens:
            raise ApiError(
                400, f"about {tokens} tokens is more than {limits.max_tokens} (runtime.embed.max_tokens)",
                code="too_many_tokens", param="input",
            )  # fmt: skip
        if data.dimensions is not None and not model.params.dimensions:
            raise ApiError(
                400, f"model `{model.name}` does not take `dimensions`", code="unsupported_parameter",
                param="dimensions",
            )  # fmt: skip
        check_model(views, model.name)
        request_id = task.request_id = unique_hex()
        structlog.contextvars.bind_contextvars(bus_request_id=request_id)
        job = EmbedRequest(
            request_id=request_id, model=model.name, inputs=inputs, encoding_format=data.encoding_format,
            dimensions=data.dimensions, user=data.user, traceparent=task.traceparent,
        )  # fmt: skip
        pending = await client.submit(EMBED, job, queue=model.name)
        answered = False
        try:
            reply = await unless_disconnected(request.receive, pending.next)
            answered = reply is not None
        finally:
            with anyio.CancelScope(shield=True):
                await pending.close(cancel=not answered)
        if reply is None:
            return Response(content=b"", status_code=499)
        if isinstance(reply, EmbedFailure):
            raise ApiError(
                reply.status, reply.message, code=reply.code or "upstream_error", type_=reply.error_type,
                param=reply.param,
            )  # fmt: skip
        assert isinstance(reply, EmbedResult)
        task.set_usage(Usage(prompt_tokens=reply.prompt_tokens))
        return Response(content=bytes(reply.data), media_type=MediaType.JSON)

    return Router(path="/v1", route_handlers=[create_embeddings])
