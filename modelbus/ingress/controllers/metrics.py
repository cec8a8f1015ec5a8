"""``GET /metrics``: the ingress's metrics in Prometheus's text format (see :mod:`modelbus.ingress.metrics`).

It sits behind the API keys like every route but the probes, because the labels name the models served.
Prometheus sends a key as a bearer token: ``authorization: {credentials: <key>}`` in the scrape config.
It is left out of the OpenAPI document: it is for the monitoring system, not for API clients.
"""

from __future__ import annotations

from litestar import Response, Router, get

from modelbus.ingress.metrics import MEDIA_TYPE, IngressMetrics

__all__ = ("metrics_router",)


def metrics_router(metrics: IngressMetrics) -> Router:
    @get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response[bytes]:
        return Response(content=await metrics.exposition(), media_type=MEDIA_TYPE)

    return Router(path="/", route_handlers=[prometheus_metrics])
