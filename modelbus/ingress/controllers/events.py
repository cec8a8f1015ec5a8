"""``GET /v1/models/events`` (model status changes as server-sent events) and ``GET /v1/asyncapi.json``.

The events route streams when the client asks for ``text/event-stream`` in ``Accept`` (browsers' EventSource
and SSE clients always do); otherwise it answers the current snapshot once, as JSON, so a plain GET (a probe,
a client that cannot stream) never hangs. The stream itself is :mod:`modelbus.ingress.status_stream`.
``/v1/asyncapi.json`` serves the AsyncAPI document of the bus's events (:mod:`modelbus.schemas.asyncapi`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import MediaType, Request, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Schema
from litestar.openapi.spec.security_requirement import SecurityRequirement

from modelbus.ingress.errors import ApiError, error_spec
from modelbus.ingress.openapi import operation_with_content
from modelbus.ingress.status_stream import EVENT_STREAM, SSE_EVENTS, StatusStream, StreamSettings
from modelbus.ingress.view_store import ModelViewStore
from modelbus.schemas.asyncapi import asyncapi_document
from modelbus.schemas.views import ModelView

__all__ = ("ModelSnapshot", "events_router", "wants_event_stream")


class ModelSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Every model's view as of KV ``revision`` (the answer without ``Accept: text/event-stream``)."""

    revision: int
    data: tuple[ModelView, ...]


_EVENT_STREAM_CONTENT = {
    EVENT_STREAM: OpenAPIMediaType(
        # OpenAPI 3.1 convention for event streams: the schema describes each event
        schema=Schema(
            type=OpenAPIType.OBJECT,
            description="One server-sent event. First `model` (a ModelView) for every model, oldest "
            "revision first, then `snapshot_complete` (`{models, revision}`); then `status` (a "
            "ModelStatusEvent) when a model's status or error code changes and `removed` "
            "(`{model, revision}`) when a model leaves. `id` is the KV revision, which only grows. `: ping` "
            "comments keep the connection open. A client that does not keep up gets `error` "
            "(`slow_consumer`, the error shape) and the stream ends.",
            required=["event", "data"],
            properties={
                "event": Schema(type=OpenAPIType.STRING, enum=list(SSE_EVENTS)),
                "id": Schema(type=OpenAPIType.INTEGER),
                "data": Schema(type=OpenAPIType.STRING, description="JSON"),
            },
        )
    )
}


def wants_event_stream(accept: str | None) -> bool:
    """True when ``Accept`` names ``text/event-stream`` (q-values and parameters are ignored)."""
    if not accept:
        return False
    return any(part.split(";")[0].strip().lower() == EVENT_STREAM for part in accept.split(","))


def events_router(
    views: ModelViewStore,
    *,
    security: list[SecurityRequirement] | None = None,
    settings: StreamSettings | None = None,
) -> Router:
    """The events and AsyncAPI routes; ``settings`` (buffer, keep-alive) are for tests to shorten."""
    stream_settings = settings or StreamSettings()
    asyncapi = msgspec.json.encode(asyncapi_document())
    errors = {500: error_spec("App not initialized (JSON snapshot only: no model view has arrived yet)")}
    if security:
        errors[401] = error_spec("Missing or invalid API key")

    @get(
        "/v1/models/events",
        summary="Stream model status changes",
        description="With `Accept: text/event-stream`: server-sent events, the current view of every model "
        "first, then each status change as it happens (see the 200 response). Each connection starts with a "
        "fresh snapshot; `Last-Event-ID` is not used. Without it: the snapshot once, as JSON. Note: a model "
        "named `events` cannot be retrieved at `/v1/models/events`.",
        operation_id="streamModelEvents",
        tags=["models"],
        responses={
            200: ResponseSpec(
                ModelSnapshot, description="The snapshot, or the stream", generate_examples=False
            ),
            **errors,
        },
        operation_class=operation_with_content({"200": _EVENT_STREAM_CONTENT}),
    )
    async def model_events(request: Request[Any, Any, Any]) -> Response[bytes]:
        if wants_event_stream(request.headers.get("accept")):
            return StatusStream(views, stream_settings)
        if not views.initialized:
            raise ApiError(
                500, "App not initialized", code="app_not_initialized", headers={"Retry-After": "1"}
            )
        snapshot = ModelSnapshot(revision=views.revision, data=views.views())
        return Response(msgspec.json.encode(snapshot), media_type=MediaType.JSON)

    @get(
        "/v1/asyncapi.json",
        summary="The AsyncAPI document of the bus's events",
        description="AsyncAPI 3.0: the subjects and messages a NATS subscriber can read (model status "
        "changes, model views, heartbeats, task history), with payload schemas generated from the code.",
        operation_id="asyncapi",
        tags=["models"],
        sync_to_thread=False,
        responses={
            200: ResponseSpec(dict[str, Any], description="The AsyncAPI document", generate_examples=False),
        },
    )
    def asyncapi_json() -> Response[bytes]:
        return Response(asyncapi, media_type=MediaType.JSON)

    return Router(path="/", route_handlers=[model_events, asyncapi_json], security=security)
