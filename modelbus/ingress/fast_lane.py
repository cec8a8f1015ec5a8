"""The ingress's fast lane: the hottest plain request answered without going through Litestar's routing.

``GET /v1/models`` with no query is what load balancers, SDKs and dashboards poll. Its answer is the
renderer's cached bytes (the same :class:`~modelbus.ingress.model_rendering.ModelRenderer` the Litestar
route uses), so the lane only frames them; everything else, a query string or a store not yet initialized
included, goes on to the app, which owns every error. Auth, request ids, metrics and the request's log
line run in front of the lane, as for every route.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from modelbus.ingress.model_query import ModelQuery
from modelbus.ingress.model_rendering import ModelRenderer
from modelbus.ingress.view_store import ModelViewStore

__all__ = ("FastLane",)

_LIST = ModelQuery()
_JSON = (b"content-type", b"application/json")


class FastLane:
    """ASGI: ``GET /v1/models`` (no query) from the renderer's cache; any other request to ``app``."""

    def __init__(self, app: ASGIApp, views: ModelViewStore, renderer: ModelRenderer) -> None:
        self._app = app
        self._views = views
        self._renderer = renderer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == ScopeType.HTTP
            and scope["path"] == "/v1/models"
            and scope["method"] == "GET"
            and not scope["query_string"]
            and self._views.initialized
        ):
            try:
                body = self._renderer.list_body(_LIST)
            except Exception:  # noqa: BLE001 - the app owns every error: it meets this one again and answers
                await self._app(scope, receive, send)
                return
            headers = [_JSON, (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self._app(scope, receive, send)
