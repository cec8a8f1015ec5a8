"""Probes, always open: ``GET /health`` (the process answers) and ``GET /v1/ready`` (it can serve).

Ready follows Spice: every model has been ready at least once (a model that never loads keeps the ingress
unready), here also requiring that the first view has arrived and that NATS is connected. ``verbose=true``
returns the same verdict as JSON with the models that were never ready.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import MediaType, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Schema
from litestar.params import QueryParameter

from modelbus.ingress.errors import error_spec
from modelbus.ingress.model_query import parse_bool
from modelbus.ingress.openapi import operation_with_content
from modelbus.ingress.view_store import ModelViewStore
from modelbus.schemas.status import ModelStatus

__all__ = ("Readiness", "health_router")


class NotReadyModel(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: ModelStatus


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    ready: bool
    initialized: bool
    nats_connected: bool
    not_ready: tuple[NotReadyModel, ...]


def readiness(views: ModelViewStore) -> Readiness:
    not_ready = tuple(NotReadyModel(id=v.id, status=v.status) for v in views.views() if not v.ever_ready)
    connected = views.nats_connected
    return Readiness(
        ready=views.initialized and connected and not not_ready,
        initialized=views.initialized,
        nats_connected=connected,
        not_ready=not_ready,
    )


_BOOLEAN = Schema(type=OpenAPIType.BOOLEAN)
_NOT_READY_MODEL = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "id": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.STRING, enum=[s.value for s in ModelStatus]),
    },
    required=["id", "status"],
)
_VERBOSE = {
    MediaType.JSON.value: OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.OBJECT,
            title="Readiness",
            properties={
                "ready": _BOOLEAN,
                "initialized": _BOOLEAN,
                "nats_connected": _BOOLEAN,
                "not_ready": Schema(type=OpenAPIType.ARRAY, items=_NOT_READY_MODEL),
            },
            required=["ready", "initialized", "nats_connected", "not_ready"],
        )
    ),
}
_TEXT = MediaType.TEXT


def health_router(views: ModelViewStore) -> Router:
    @get(
        "/health",
        summary="Liveness probe",
        description="Answers 200 `ok` while the process serves HTTP. Never needs an API key.",
        operation_id="health",
        tags=["probes"],
        media_type=_TEXT,
        sync_to_thread=False,
    )
    def health() -> str:
        return "ok"

    @get(
        "/v1/ready",
        summary="Readiness probe",
        description="200 `ready` once every model has been ready at least once (and NATS is connected), "
        "else 503 `not ready`. With verbose=true, the verdict as JSON. Never needs an API key.",
        operation_id="ready",
        tags=["probes"],
        sync_to_thread=False,
        responses={
            200: ResponseSpec(str, description="Ready", media_type=_TEXT, generate_examples=False),
            400: error_spec("verbose has a value that is not allowed"),
            503: ResponseSpec(str, description="Not ready", media_type=_TEXT, generate_examples=False),
        },
        operation_class=operation_with_content({"200": _VERBOSE, "503": _VERBOSE}),
    )
    def ready(
        verbose: Annotated[
            str,
            QueryParameter(
                description="Answer with JSON detail (true/false or 1/0).",
                schema_extra={"type": "boolean", "default": False},
            ),
        ] = "false",
    ) -> Response[bytes]:
        report = readiness(views)
        status_code = 200 if report.ready else 503
        if parse_bool("verbose", verbose):
            return Response(msgspec.json.encode(report), status_code=status_code, media_type=MediaType.JSON)
        return Response(b"ready" if report.ready else b"not ready", status_code=status_code, media_type=_TEXT)

    return Router(path="/", route_handlers=[health, ready])
