"""``GET /``: the status page, and the three JSON endpoints beside ``/metrics`` that it reads.

The page (``status_page/``: one HTML file, one script, one style sheet; no build step, nothing fetched from
elsewhere) is public, because it holds no data: it asks for the API key, keeps it in the tab's session
storage and sends it as a header to ``/v1/models/events`` and to these endpoints, which sit behind the keys
like every route but the probes:

- ``GET /metrics/queues``: each work queue's depth and waiting now and over the last minutes;
- ``GET /metrics/workers``: each worker's capacity, in-flight and counters, from ``$SRV.STATS``;
- ``GET /metrics/history``: recent requests and per-model load from the task history, asked on the bus of
  whoever keeps it (``available`` false, with the reason, when no one does).

The page is sent with a Content-Security-Policy that allows only its own script and style sheet.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

import msgspec
import nats.errors
from litestar import Request, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec.security_requirement import SecurityRequirement
from litestar.params import QueryParameter
from nats.aio.client import Client

from modelbus.config import HistorySettings
from modelbus.ingress.errors import error_spec
from modelbus.ingress.metrics import QueueDepths
from modelbus.ingress.worker_loads import WorkerLoads
from modelbus.schemas.dashboard import QueuesView, WorkersView
from modelbus.schemas.history import HistoryQuery, HistorySummary
from modelbus.schemas.subjects import HISTORY_SUMMARY_SUBJECT

__all__ = ("PAGE_PATHS", "status_page_router")

PAGE_PATHS = frozenset({"/", "/status/app.js", "/status/app.css"})  # public: they hold no data
_ASSETS = {  # route → (file in status_page/, media type)
    "/": ("index.html", "text/html"),
    "/status/app.js": ("app.js", "text/javascript"),
    "/status/app.css": ("app.css", "text/css"),
}
_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
HISTORY_TIMEOUT_S = 3.0
_history_decoder = msgspec.json.Decoder(HistorySummary)
_encoder = msgspec.json.Encoder()

LimitParam = Annotated[
    int, QueryParameter(name="limit", ge=1, le=200, description="How many recent requests to list (1-200)")
]


def _asset(name: str) -> bytes:
    return resources.files("modelbus.ingress").joinpath("status_page", name).read_bytes()


async def history_summary(nc: Client, settings: HistorySettings, limit: int) -> HistorySummary:
    """Ask whoever keeps the task history; a summary saying why not when no one can answer."""
    if not settings.enabled:
        return HistorySummary(available=False, reason="The task history is off (runtime.history.enabled).")
    query = _encoder.encode(HistoryQuery(limit=limit))
    try:
        reply = await nc.request(HISTORY_SUMMARY_SUBJECT, query, timeout=HISTORY_TIMEOUT_S)
    except nats.errors.NoRespondersError:
        return HistorySummary(
            available=False,
            reason="No process keeps a task history that can be read now (an NSQL worker with the embedded "
            "engine, or `modelbus history` with a ClickHouse server).",
        )
    except (nats.errors.Error, TimeoutError):
        return HistorySummary(available=False, reason="The task history did not answer in time.")
    try:
        return _history_decoder.decode(reply.data)
    except msgspec.DecodeError:
        return HistorySummary(
            available=False, reason="The task history sent an answer this ingress cannot read."
        )


def status_page_router(
    nc: Client,
    depths: QueueDepths,
    history: HistorySettings,
    *,
    security: list[SecurityRequirement] | None = None,
) -> Router:
    pages = {path: (_asset(name), media) for path, (name, media) in _ASSETS.items()}
    loads = WorkerLoads(nc)
    errors: dict[int, ResponseSpec] = {}
    if security:
        errors[401] = error_spec("Missing or invalid API key")

    @get(list(_ASSETS), include_in_schema=False, sync_to_thread=False)
    def page(request: Request[Any, Any, Any]) -> Response[bytes]:
        body, media = pages[request.scope["path_template"]]  # the route matched: one of _ASSETS
        return Response(body, media_type=media, headers=_HEADERS)

    @get(
        "/metrics/queues",
        summary="Queue depths",
        description="Each work queue (chat per model, and the shared NSQL queue): requests waiting or being "
        "answered (`depth`) and waiting for a slot (`waiting`), now and as samples of the last minutes.",
        operation_id="queueDepths",
        tags=["status"],
        responses={200: ResponseSpec(QueuesView, generate_examples=False), **errors},
        security=security,
    )
    async def queues() -> QueuesView:
        return await depths.view()

    @get(
        "/metrics/workers",
        summary="Worker loads",
        description="Every worker that answered `$SRV.STATS` within a moment: per model its status, "
        "capacity, in-flight requests and counters; an NSQL worker's capacity and in-flight.",
        operation_id="workerLoads",
        tags=["status"],
        responses={200: ResponseSpec(WorkersView, generate_examples=False), **errors},
        security=security,
    )
    async def workers() -> WorkersView:
        return await loads.view()

    @get(
        "/metrics/history",
        summary="Recent work",
        description="The last requests clients made (newest first) and, per model, requests, failures and "
        "completion tokens per minute over the last hour, from the task history. `available` is false, "
        "with the reason, when the history is off or no process that keeps it answers.",
        operation_id="recentWork",
        tags=["status"],
        responses={
            200: ResponseSpec(HistorySummary, generate_examples=False),
            400: error_spec("`limit` is not a whole number from 1 to 200"),
            **errors,
        },
        security=security,
    )
    async def recent(limit: LimitParam = 30) -> HistorySummary:
        return await history_summary(nc, history, limit)

    return Router(path="/", route_handlers=[page, queues, workers, recent])
