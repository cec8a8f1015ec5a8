"""Watch the heartbeats workers publish, as the registry would, and wait for a status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from nats.aio.client import Client
from nats.aio.msg import Msg

from modelbus.schemas.heartbeat import Goodbye, Heartbeat, worker_report_decoder
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.subjects import HEARTBEAT_WILDCARD


class HeartbeatLog:
    def __init__(self) -> None:
        self.reports: list[Heartbeat | Goodbye] = []
        self._changed = anyio.Event()

    def add(self, report: Heartbeat | Goodbye) -> None:
        self.reports.append(report)
        self._changed.set()
        self._changed = anyio.Event()

    def statuses(self, model: str) -> list[ModelStatus]:
        """The distinct successive statuses reported for ``model`` (repeats collapsed)."""
        seen: list[ModelStatus] = []
        for r in self.reports:
            if isinstance(r, Heartbeat) and r.model == model and (not seen or seen[-1] != r.status):
                seen.append(r.status)
        return seen

    async def wait_for(self, model: str, status: ModelStatus, timeout: float = 30) -> Heartbeat:
        with anyio.fail_after(timeout):
            while True:
                for r in reversed(self.reports):
                    if isinstance(r, Heartbeat) and r.model == model:
                        if r.status == status:
                            return r
                        break
                await self._changed.wait()


@asynccontextmanager
async def heartbeat_log(nc: Client) -> AsyncIterator[HeartbeatLog]:
    log = HeartbeatLog()
    decoder = worker_report_decoder()

    async def on_message(msg: Msg) -> None:
        log.add(decoder.decode(msg.data))

    sub = await nc.subscribe(HEARTBEAT_WILDCARD, cb=on_message)
    try:
        yield log
    finally:
        await sub.unsubscribe()
