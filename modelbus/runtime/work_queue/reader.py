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
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
import anyio.abc
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ("PULL_RECHECK", "SlotConsumer", "WorkQueueReader")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
# status codes the server sends to a pull request's inbox
_HEARTBEAT, _NO_MESSAGES, _EXPIRED, _CONFLICT = "100", "404", "408", "409"
PULL_RECHECK = 0.5  # seconds: also re-ask after a reconnect, or when the worker turns ready


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

    def wanted(self, free_slots: int, *, at_least: int = 1) -> int:
        """How many :meth:`ask` would ask for now (0: none)."""
        owed = self.owed
        wanted = free_slots - owed
        return wanted if wanted > 0 and (not owed or wanted >= at_least) else 0

    async def ask(self, free_slots: int, *, at_least: int = 1) -> None:
        """Ask for as many messages as there are free slots not already asked for: when nothing is asked
        for, or once that is ``at_least`` (so a busy worker does not send a pull request per message)."""
        wanted = self.wanted(free_slots, at_least=at_least)
        if not wanted:
            return
        request = {"batch": wanted, "expires": int(self._expires * 1e9)}
        # counted before it is sent: a message may be delivered for it before publish returns
        # (the server may answer up to its own expiry after ours: keep the request a little longer)
        pull = _Pull(wanted, time.monotonic() + self._expires + 1.0)
        self._pulls.append(pull)
        try:
            await self.nc.publish(self._next_subject, _encoder.encode(request), reply=self._inbox)
        except nats.errors.Error as exc:
            log.warning("work_queue.pull_failed", error=type(exc).__name__)
            if pull in self._pulls:
                self._pulls.remove(pull)

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


Handler = Callable[[Msg, anyio.abc.TaskGroup], Coroutine[Any, Any, None]]
Background = Callable[[], Coroutine[Any, Any, None]]


class SlotConsumer:
    """Runs a handler for the messages of a durable pull consumer, never more at once than the capacity.

    The one loop both kinds of worker share: it asks for messages only while ``ready()`` and only for the
    free slots, hands each message to ``handle(msg, tg)`` in its own task (``tg`` is the consumer's task
    group, for work a request starts that must outlive a call), and on :meth:`stop_intake` takes no more
    (a message that still arrives is handed back with ``nak``). ``on_count`` hears the in-flight count.
    """

    def __init__(
        self, nc: Client, *, stream: str, consumer: str, capacity: Callable[[], int], handle: Handler,
        ready: Callable[[], bool] = lambda: True, on_count: Callable[[int], None] = lambda _n: None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self._stream, self._consumer = stream, consumer
        self._capacity, self._ready, self._handle, self._on_count = capacity, ready, handle, on_count
        self.in_flight = 0
        self.intake = True
        self._changed = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._reader: WorkQueueReader | None = None

    def wake(self) -> None:
        """Look at the free slots again now (after a status change, say)."""
        self._changed.set()

    def stop_intake(self) -> None:
        self.intake = False
        self._changed.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(
        self, *, background: Sequence[Background] = (),
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:  # fmt: skip
        async with anyio.create_task_group() as tg:
            reader = WorkQueueReader(
                self.nc, stream=self._stream, consumer=self._consumer,
                on_message=lambda msg: self._take(msg, tg), on_change=self.wake,
            )  # fmt: skip
            await reader.start()
            self._reader = reader
            task_status.started()
            for task in background:
                tg.start_soon(task)
            try:
                while self.intake:
                    if self._ready():
                        await reader.ask(self._capacity() - self.in_flight, at_least=self._at_least())
                    self._changed = anyio.Event()
                    with anyio.move_on_after(PULL_RECHECK):
                        await self._changed.wait()
            finally:
                self._reader = None
                with anyio.CancelScope(shield=True):
                    await reader.stop()

    def _take(self, msg: Msg, tg: anyio.abc.TaskGroup) -> None:
        if self.in_flight >= self._capacity() or not self.intake:
            tg.start_soon(msg.nak)  # more arrived than there are slots (or we are stopping): hand it back
            return
        self._count(+1)
        if self._idle.is_set():
            self._idle = anyio.Event()
        tg.start_soon(self._run_one, msg, tg)

    async def _run_one(self, msg: Msg, tg: anyio.abc.TaskGroup) -> None:
        try:
            await self._handle(msg, tg)
        finally:
            self._count(-1)
            reader = self._reader
            # wake the loop only when it would ask for more (a busy worker's every answer need not)
            if reader is None or reader.wanted(self._capacity() - self.in_flight, at_least=self._at_least()):
                self._changed.set()
            if self.in_flight == 0:
                self._idle.set()

    def _at_least(self) -> int:
        """The fewest free slots worth a pull request while others are still owed."""
        return max(1, self._capacity() // 4)

    def _count(self, delta: int) -> None:
        self.in_flight += delta
        self._on_count(self.in_flight)
