"""Which requests their clients gave up on: the ingress says so on ``modelbus.v1.cancel.<request>``."""

from __future__ import annotations

from collections import OrderedDict

import anyio
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from modelbus.schemas.subjects import CANCEL_WILDCARD, decode_token

__all__ = ("Cancellations",)

log = structlog.get_logger(__name__)
REMEMBERED = 10_000


class Cancellations:
    """Cancels running requests at once, and remembers recent ids so a queued one is never started."""

    def __init__(self) -> None:
        self._running: dict[str, anyio.CancelScope] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._sub: Subscription | None = None

    async def subscribe(self, nc: Client) -> None:
        self._sub = await nc.subscribe(CANCEL_WILDCARD, cb=self._on_cancel)

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            request_id = decode_token(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        self._recent[request_id] = None
        if len(self._recent) > REMEMBERED:
            self._recent.popitem(last=False)
        scope = self._running.get(request_id)
        if scope is not None:
            log.info("chat.cancelled_by_client", request_id=request_id)
            scope.cancel()

    def was_cancelled(self, request_id: str) -> bool:
        return request_id in self._recent

    def track(self, request_id: str, scope: anyio.CancelScope) -> None:
        self._running[request_id] = scope

    def forget(self, request_id: str) -> None:
        self._running.pop(request_id, None)
