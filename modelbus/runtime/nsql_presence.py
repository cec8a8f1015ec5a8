"""Whether any NSQL worker is ready: one request on ``modelbus.v1.nsql_ready``, a yes kept for a second.

The ingress asks before it queues a question (no worker: 503 at once rather than a wait for the deadline),
and a model worker's tool loop before its tools run (no worker: the model is told the datasets cannot be
read now). A yes is kept for :data:`READY_CACHE_S`, so a busy process asks about once a second; a no is
asked again each time, so a worker that comes up is seen at once.
"""

from __future__ import annotations

import time

import nats.errors
from nats.aio.client import Client

from modelbus.schemas.subjects import NSQL_READY_SUBJECT

__all__ = ("READY_CACHE_S", "NsqlPresence")

READY_CACHE_S = 1.0
PROBE_TIMEOUT_S = 1.0


class NsqlPresence:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._ready_until = 0.0

    async def ready(self) -> bool:
        if time.monotonic() < self._ready_until:
            return True
        try:
            await self._nc.request(NSQL_READY_SUBJECT, b"", timeout=PROBE_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError):  # no responder, no answer in time, no connection
            return False
        self._ready_until = time.monotonic() + READY_CACHE_S
        return True
