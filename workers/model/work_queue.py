"""Pull from a JetStream work queue only into free slots, with long-poll pull requests.

nats-py's ``fetch`` polls with ``no_wait`` first and wastes a round trip (and CPU) per empty poll, and its
batch pulls can deliver into a later fetch. This reader keeps its own inbox and asks the consumer for exactly
as many messages as it has free slots, each request waiting up to ``expires`` on the server; messages then
arrive as soon as they are published. It tracks what is still owed per request (the server fills waiting
requests in order), so it never asks for more than it can take.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ("WorkQueueReader",)

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
# status codes the server sends to a pull request's inbox
_HEARTBEAT, _NO_MESSAGES, _EXPIRED, _CONFLICT = "100", "404", "408", "409"


class _Pull:
    __slots__ = ("deadline", "owed")

    def __init__(self, owed: int, deadline: float) -> None:
        self.owed = owed
        self.deadline = deadline


class WorkQueueReader:
    def __init__(
        self, nc: Client, *, stream: str, consumer: str, on_message: Callable[[Msg], None],
        on_change: Callable[[], None], expires: float = 5.0,
    ) -> None:  # fmt: skip
        self.nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._on_message = on_message
        self._on_change = on_change
        self._expires = expires
        self._inbox = nc.new_inbox()
        self._pulls: deque[_Pull] = deque()
        self._sub: Subscription | None = None

    @property
    def owed(self) -> int:
        """Messages asked for and not yet delivered (requests past their deadline no longer count)."""
        now = time.monotonic()
        while self._pulls and self._pulls[0].deadline < now:
            self._pulls.popleft()
        return sum(p.owed for p in self._pulls)

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._receive)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        self._pulls.clear()

    async def ask(self, free_slots: int) -> None:
        """Ask for as many messages as there are free slots not already asked for."""
        wanted = free_slots - self.owed
        if wanted <= 0:
            return
        request = {"batch": wanted, "expires": int(self._expires * 1e9)}
        try:
            await self.nc.publish(self._next_subject, _encoder.encode(request), reply=self._inbox)
        except nats.errors.Error as exc:
            log.warning("work_queue.pull_failed", error=type(exc).__name__)
            return
        # the server may answer up to its own expiry after ours: keep the request a little longer
        self._pulls.append(_Pull(wanted, time.monotonic() + self._expires + 1.0))

    async def _receive(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            if self._pulls:
                self._pulls[0].owed -= 1
                if self._pulls[0].owed <= 0:
                    self._pulls.popleft()
            self._on_message(msg)
            return
        if status == _HEARTBEAT:
            return
        if status in (_EXPIRED, _CONFLICT, _NO_MESSAGES) and self._pulls:
            self._pulls.popleft()  # the oldest request is over, whatever it still owed
        self._on_change()
