"""``POST /v1/nsql``: a question in English, answered from the datasets by an NSQL worker over the bus.

The ingress resolves the model and the datasets (so a mistake is a 400 at once), negotiates the format
from ``Accept``, and queues the request; the NSQL worker asks the model for SQL over the same chat path
clients use, checks and runs it, renders the answer, and the body comes back as it is (put back together
when it came in parts: :mod:`modelbus.ingress.nsql_reply`). With ``stream: true`` the answer is server-sent
events (:mod:`modelbus.ingress.nsql_stream`); what is refused before the request is queued is still a plain
HTTP error.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio
import structlog
from litestar import Request, Response, Router, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Schema
from litestar.openapi.spec.security_requirement import SecurityRequirement
from litestar.params import Body
from litestar.response import Stream

from modelbus.config import Config, ModelConfig
from modelbus.ingress.disconnect import unless_disconnected
from modelbus.ingress.errors import ApiError, error_spec, model_not_ready
from modelbus.ingress.nsql_reply import ReplyReader, failure_of
from modelbus.ingress.nsql_stream import EVENT_STREAM, SSE_HEADERS, nsql_events
from modelbus.ingress.openapi import operation_with_content, sse_media_type
from modelbus.ingress.request_task import RequestTask
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.ids import unique_hex
from modelbus.runtime.nsql_presence import NsqlPresence
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.schemas.nsql import NSQL, NsqlQuery, NsqlRequest, ResponseFormat, negotiate
from modelbus.schemas.status import ModelStatus

__all__ = ("nsql_router",)

log = structlog.get_logger(__name__)
NsqlBody = Annotated[NsqlQuery, Body(description="The question, and optionally the model and datasets")]
# Spice's name for "the NSQL model" (its 2025 default, and the seed's example): the default model here
SPICE_DEFAULT_MODEL = "nql"


def default_model(config: Config) -> ModelConfig:
    """The configured NSQL model, else the only model with datasets, else the only model."""
    if config.runtime.nsql.model:
        found = config.model(config.runtime.nsql.model)
        if found is not None:
            return found
    with_datasets = [m for m in config.models if m.datasets]
    candidates = with_datasets if with_datasets else list(config.models)
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(m.name for m in candidates) or "(none configured)"
    raise ApiError(
        400,
        f"No model given and no single default; choose one of: {names}",
        code="model_required",
        param="model",
    )


def resolve(config: Config, query: NsqlQuery) -> tuple[ModelConfig, tuple[str, ...]]:
    if query.model is None or (
        query.model == SPICE_DEFAULT_MODEL and config.model(SPICE_DEFAULT_MODEL) is None
    ):
        model = default_model(config)
    else:
        found = config.model(query.model)
        worker = config.worker(query.model)
        if found is None and worker is not None:
            raise ApiError(
                400, f"`{query.model}` is a load-balancing worker; /v1/nsql asks one model: one of its "
                f"members ({', '.join(worker.members)})", code="model_not_supported", param="model",
            )  # fmt: skip
        if found is None:
            names = ", ".join(m.name for m in config.models)
            raise ApiError(
                400,
                f"Model `{query.model}` not found; models: {names}",
                code="model_not_found",
                param="model",
            )
        model = found
    allowed = model.datasets or tuple(d.name for d in config.datasets)
    # an empty list means "not given": passed on as (), the worker would query all of its datasets
    if not query.datasets:
        if not allowed:
            raise ApiError(400, "No datasets are configured", code="dataset_not_found", param="datasets")
        return model, allowed
    known = {d.name for d in config.datasets}
    for name in query.datasets:
        if name not in known:
            raise ApiError(
                400,
                f"Dataset `{name}` not found; datasets: {', '.join(sorted(known))}",
                code="dataset_not_found",
                param="datasets",
            )
        if name not in allowed:
            raise ApiError(
                400,
                f"Dataset `{name}` is not available to model `{model.name}`",
                code="dataset_not_allowed",
                param="datasets",
            )
    return model, tuple(dict.fromkeys(query.datasets))


class _WorkerPresence:
    """A 503 when no NSQL worker is ready (:class:`~modelbus.runtime.nsql_presence.NsqlPresence`)."""

    def __init__(self, client: WorkQueueClient) -> None:
        self._presence = NsqlPresence(client.nc)

    async def check(self) -> None:
        if not await self._presence.ready():
            raise ApiError(
                503, "No NSQL worker is ready", code="nsql_unavailable", headers={"Retry-After": "1"}
            )


def _responses(*, auth: bool) -> dict[int, ResponseSpec]:
    responses = {
        400: error_spec(
            "Unknown model or dataset, bad body, or SQL that still failed after the last attempt"
        ),
        413: error_spec("The request body is too large"),
        429: error_spec("The NSQL queue is full (see Retry-After)"),
        500: error_spec("The NSQL worker failed on this request"),
        502: error_spec("The model failed while writing the SQL"),
        503: error_spec("No ready model or NSQL worker"),
        504: error_spec("The deadline passed"),
        200: ResponseSpec(
            data_container=list[dict[str, Any]],
            description="Rows as JSON (default); with other Accept types: the vnd envelope, SQL, CSV or text",
        ),
    }
    if auth:
        responses[401] = error_spec("Missing or invalid API key")
    return responses


def _text(description: str) -> OpenAPIMediaType:
    return OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, description=description))


# the formats ``Accept`` selects (see modelbus.schemas.nsql.negotiate), beside the default JSON rows
_FORMAT_CONTENT = {
    ResponseFormat.VND.value: OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.OBJECT,
            description="Spice's envelope: the row count, the result's schema, the rows and the SQL",
            required=["row_count", "schema", "data", "sql"],
            properties={
                "row_count": Schema(type=OpenAPIType.INTEGER),
                "schema": Schema(type=OpenAPIType.OBJECT),
                "data": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
                "sql": Schema(type=OpenAPIType.STRING),
                "explanation": Schema(
                    type=OpenAPIType.STRING, description="What the SQL computes, in one sentence"
                ),
            },
        )
    ),
    ResponseFormat.SQL.value: _text("The SQL only, not executed (`Accept: application/sql`)"),
    ResponseFormat.CSV.value: _text("The rows as RFC 4180 CSV with a header"),
    ResponseFormat.TEXT.value: _text("The rows as an aligned text table"),
    EVENT_STREAM: sse_media_type(
        "With `stream: true`: `: nsql still in progress` comments while the question is "
        "answered, then one event whose `data` is the body the request gets without `stream`, in the "
        "format `Accept` chose (a `data:` line per line of it), or `event: error` with the error shape."
    ),
}


def nsql_router(
    config: Config,
    views: ModelViewStore,
    client: WorkQueueClient,
    recorder: TaskRecorder,
    *,
    security: list[SecurityRequirement] | None,
) -> Router:
    presence = _WorkerPresence(client)
    settings = config.runtime.nsql

    @post(
        "/nsql",
        summary="Answer a question in English from the datasets (text-to-SQL on ClickHouse)",
        status_code=200,
        security=security,
        responses=_responses(auth=bool(security)),
        operation_class=operation_with_content({"200": _FORMAT_CONTENT}),
    )
    async def nsql(request: Request[Any, Any, Any], data: NsqlBody) -> Response[Any]:
        known = data.model if data.model and views.get(data.model) is not None else ""
        task = RequestTask(
            recorder,
            request.scope,
            task="nsql",
            model=known,
            input=data.query if recorder.keeps_text else None,
        )
        return await task.around(partial(_answer, request, data, task))

    async def _answer(request: Request[Any, Any, Any], data: NsqlQuery, task: RequestTask) -> Response[Any]:
        model, datasets = resolve(config, data)
        task.model = model.name
        request.state.model = model.name
        view = views.get(model.name)
        if view is None or view.status is not ModelStatus.READY:
            raise model_not_ready(model.name, view)
        await presence.check()
        fmt = negotiate(request.headers.get("accept"))
        request_id = task.request_id = unique_hex()
        structlog.contextvars.bind_contextvars(bus_request_id=request_id)
        job = NsqlRequest(
            request_id=request_id,
            query=data.query,
            model=model.name,
            datasets=datasets,
            sample_data_enabled=data.sample_data_enabled,
            format=fmt,
            traceparent=task.traceparent,
        )
        pending = await client.submit(NSQL, job)
        reader = ReplyReader(pending, max_bytes=settings.max_reply_bytes)
        if data.stream:
            events = nsql_events(reader, keepalive=settings.stream_keepalive, task=task)
            return Stream(events, media_type=EVENT_STREAM, headers=SSE_HEADERS)
        answered = False
        try:
            got = await unless_disconnected(request.receive, reader.wait)
            answered = got is not None
        finally:
            with anyio.CancelScope(shield=True):  # the client left, or no answer: stop the work
                await pending.close(cancel=not answered)
        if got is None:  # the client left
            return Response(content=b"", status_code=499)
        task.add_output(got.reply.sql or "")
        if got.reply.status != 200:
            raise failure_of(got.reply)
        # Litestar adds "; charset=utf-8" to text/* itself; application/sql gets it from the format
        media_type = fmt.value if fmt.value.startswith("text/") else fmt.content_type
        return Response(content=got.body, status_code=200, media_type=media_type)

    return Router(path="/v1", route_handlers=[nsql])
