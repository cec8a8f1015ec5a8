"""The Litestar application of the ingress: routes, error shape, auth, request logging and limits.

``create_app`` takes every collaborator explicitly (the view store and the work-queue client) and reads
nothing from the environment. The app's ASGI handler is wrapped so that metrics, request logging, then
API-key auth run in front of routing: every response, a 404 for an unknown route included, carries
``x-request-id`` and is counted in ``GET /metrics`` (the metrics live in a registry of this app's own). The
fast lane (``fast_lane.py``) sits behind them, in front of Litestar.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.types import ASGIApp

from modelbus.config import Config
from modelbus.ingress.auth import PUBLIC_PATHS, ApiKeyAuth
from modelbus.ingress.controllers.chat import ChatCompletions, chat_router
from modelbus.ingress.controllers.embeddings import embeddings_router
from modelbus.ingress.controllers.events import events_router
from modelbus.ingress.controllers.health import health_router
from modelbus.ingress.controllers.metrics import metrics_router
from modelbus.ingress.controllers.models import models_router
from modelbus.ingress.controllers.nsql import nsql_router
from modelbus.ingress.controllers.responses import responses_router
from modelbus.ingress.controllers.status_page import PAGE_PATHS, status_page_router
from modelbus.ingress.errors import EXCEPTION_HANDLERS
from modelbus.ingress.fast_lane import FastLane
from modelbus.ingress.load_balance import LoadBalancer
from modelbus.ingress.logging_middleware import RequestLogging
from modelbus.ingress.metrics import IngressMetrics, QueueDepths, RequestMetrics
from modelbus.ingress.model_rendering import ModelRenderer
from modelbus.ingress.openapi import API_KEY_SECURITY, openapi_config
from modelbus.ingress.response_store import ResponseStore
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.work_queue.client import WorkQueueClient

__all__ = ("create_app",)


def create_app(
    config: Config,
    views: ModelViewStore,
    client: WorkQueueClient,
    recorder: TaskRecorder | None = None,
    responses: ResponseStore | None = None,
) -> Litestar:
    """``recorder`` records each chat and NSQL request in the task history (default: as configured);
    ``responses`` is where ``/v1/responses`` keeps stored responses (without it the route is not served)."""
    recorder = recorder or TaskRecorder(client.nc, config.runtime.history, component="ingress")
    api_keys = config.runtime.auth.api_keys
    security = API_KEY_SECURITY if api_keys else None
    embedding = frozenset(e.name for e in config.embeddings)
    balancer = LoadBalancer(config.workers, views) if config.workers else None
    optional = []  # served only with what they need
    if responses is not None:
        optional.append(
            responses_router(
                views, client, responses, config.runtime.chat, recorder, security=security,
                embedding_models=embedding, balancer=balancer,
            )
        )  # fmt: skip
    depths = QueueDepths(client.nc.jetstream(), views)
    metrics = IngressMetrics(views, depths)
    renderer = ModelRenderer(views)
    chat = ChatCompletions(
        views, client, config.runtime.chat, recorder, embedding_models=embedding, balancer=balancer
    )
    app = Litestar(
        route_handlers=[
            health_router(views),
            models_router(views, renderer, security=security),
            events_router(views, security=security),
            chat_router(chat, security=security),
            embeddings_router(config, views, client, recorder, security=security),
            nsql_router(config, views, client, recorder, security=security),
            *optional,
            metrics_router(metrics),
            status_page_router(client.nc, depths, config.runtime.history, security=security),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=config.runtime.http.max_body_bytes,
        openapi_config=openapi_config(auth=bool(api_keys)),
        logging_config=None,
        debug=False,
    )
    # Litestar's own middleware runs only after routing has found a route; these must see every request.
    handler: ASGIApp = FastLane(
        app.asgi_handler, views, renderer, chat, max_body_bytes=config.runtime.http.max_body_bytes
    )
    if api_keys:
        handler = ApiKeyAuth(handler, api_keys, public_paths=PUBLIC_PATHS | PAGE_PATHS)
    app.asgi_handler = RequestMetrics(RequestLogging(handler), metrics)
    return app
