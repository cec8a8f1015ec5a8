"""The client side of every kind of job: publish a request onto its work queue, route the replies back.

The ingress uses it for HTTP clients, and the NSQL worker to ask a model for SQL. One inbox subscription per
process carries every reply; the last subject token says which request it belongs to. :class:`Pending`
checks the replies for order (``seq``) and for a worker that went silent, so a client never waits on a
dead worker and never gets an answer with a hole in it. Failures are :mod:`.errors`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import anyio
import msgspec
import nats.errors
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from modelbus.config import QueueSettings
from modelbus.runtime.jetstream import ensure_work_queue
from modelbus.runtime.work_queue.errors import (
    BusUnavailable,
    DeadlinePassed,
    QueueFull,
    ReplyIncomplete,
    ReplyLost,
)
from modelbus.runtime.work_queue.order import ReplyOrder
from modelbus.schemas.jobs import JobKind, JobReply, JobRequest, Keepalive
from modelbus.schemas.subjects import cancel_subject

__all__ = ("GiveUp", "Pending", "WorkQueueClient")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
BUFFERED_REPLIES = 4096
# JetStream's "maximum messages per subject exceeded" (the per-queue bound, discard-new)
QUEUE_FULL_CODES = frozenset({10077})
SILENT_KEEPALIVES = 4  # a worker that answered and is then silent this many keepalive intervals is dead
GIVE_UP_CHECK_S = 0.5  # how often a request still waiting for a worker asks whether to stop waiting

Req = TypeVar("Req", bound=JobRequest)
Rep = TypeVar("Rep", bound=JobReply)

GiveUp = Callable[[], BaseException | None]
"""Asked while a request waits for its first answer: an exception to raise instead of waiting on, or None."""


class Pending(Generic[Rep]):
    """The replies to one request, in order, from the one worker that answers it."""

    __slots__ = (
        "_client", "_closed", "_decoder", "_give_up", "_keepalive", "_order", "_receive", "_worked_on",
        "deadline", "kind", "request_id",
    )  # fmt: skip

    def __init__(
        self,
        client: WorkQueueClient,
        kind: JobKind[Any, Rep],
        request_id: str,
        receive: MemoryObjectReceiveStream[bytes],
        *,
        deadline: float,
        keepalive: float,
        give_up: GiveUp | None = None,
    ) -> None:
        self._client = client
        self.kind = kind
        self.request_id = request_id
        self._receive = receive
        self.deadline = deadline
        self._keepalive = keepalive
        self._give_up = give_up
        self._decoder: msgspec.json.Decoder[Any] = _decoder(kind)
        self._order = ReplyOrder(kind.commit)
        self._worked_on: float | None = None  # when a worker last said it holds this request
        self._closed = False

    @property
    def worker_id(self) -> str | None:
        """The worker whose answer this is (None until one answered)."""
        return self._order.worker_id

    async def next(self) -> Rep:
        """The next reply. Raises DeadlinePassed, ReplyLost on silence, ReplyIncomplete on a gap."""
        reply = await self.wait()
        assert reply is not None
        return reply

    async def wait(self, tick: float | None = None) -> Rep | None:
        """The next reply, or None once ``tick`` seconds passed without one (the caller may call again)."""
        tick_end = None if tick is None else time.monotonic() + tick
        while True:
            raw = await self._receive_one(tick_end)
            if raw is None:
                return None
            try:
                reply = self._decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ReplyIncomplete(
                    f"a reply from the {self.kind.worker} could not be read: {exc}"
                ) from exc
            if isinstance(reply, Keepalive):
                if self._order.worker_id in (None, reply.worker_id):
                    self._worked_on = time.monotonic()  # a sign of life; only an answer binds
                continue
            if self._order.accept(reply):
                return cast(Rep, reply)

    async def _receive_one(self, tick_end: float | None) -> bytes | None:
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                raise DeadlinePassed(f"The request timed out before the {self.kind.worker} answered")
            # before a worker has answered, the request may wait in the queue until its deadline (or until
            # ``give_up`` says there is no point); once one has, it must keep talking
            bound = self._order.worker_id is not None
            if bound:
                wait = min(remaining, self._keepalive * SILENT_KEEPALIVES)
            else:
                wait = remaining if self._give_up is None else min(remaining, GIVE_UP_CHECK_S)
            if tick_end is not None:
                wait = min(wait, max(0.0, tick_end - time.monotonic()))
            with anyio.move_on_after(wait):
                try:
                    return await self._receive.receive()
                except anyio.EndOfStream as exc:
                    raise ReplyIncomplete("the request's reply route was closed") from exc
            if tick_end is not None and time.monotonic() >= tick_end:
                return None
            if bound and self.deadline > time.time():
                raise ReplyLost(f"the {self.kind.worker} {self._order.worker_id} stopped answering")
            if not bound and self._give_up is not None and not self._held():
                reason = self._give_up()
                if reason is not None:
                    raise reason

    def _held(self) -> bool:
        """Whether a worker has said recently that it holds this request (then it is not given up: a
        draining worker finishes what it holds, even after it has left the registry)."""
        return (
            self._worked_on is not None
            and time.monotonic() - self._worked_on < self._keepalive * SILENT_KEEPALIVES
        )

    async def close(self, *, cancel: bool) -> None:
        """Stop routing replies here; tell the worker to stop when the client did not get the whole answer."""
        if self._closed:
            return
        self._closed = True
        self._client.forget(self.request_id)
        self._receive.close()
        if cancel:
            await self._client.cancel(self.request_id)


_decoders: dict[str, msgspec.json.Decoder[Any]] = {}


def _decoder(kind: JobKind[Any, Any]) -> msgspec.json.Decoder[Any]:
    """One decoder per kind: its replies and the keep-alive."""
    found = _decoders.get(kind.name)
    if found is None:
        found = _decoders[kind.name] = msgspec.json.Decoder(kind.replies | Keepalive)
    return found


class WorkQueueClient:
    """``async with WorkQueueClient(nc, {CHAT: settings.chat, ...})``: submits jobs of those kinds."""

    def __init__(
        self, nc: Client, queues: Mapping[JobKind[Any, Any], QueueSettings], *, client_id: str | None = None
    ) -> None:
        self.nc = nc
        self._queues = {kind.name: (kind, settings) for kind, settings in queues.items()}
        self.client_id = client_id or uuid.uuid4().hex[:12]
        self._inbox = f"_INBOX.modelbus.{self.client_id}"
        self._routes: dict[str, MemoryObjectSendStream[bytes]] = {}
        self._sub: Subscription | None = None
        self._js = nc.jetstream()

    def settings(self, kind: JobKind[Any, Any]) -> QueueSettings:
        return self._queues[kind.name][1]

    async def __aenter__(self) -> WorkQueueClient:
        for kind, settings in self._queues.values():
            await ensure_work_queue(self._js, kind, settings)
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._route)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sub is not None:
            with anyio.move_on_after(2, shield=True):
                await self._sub.unsubscribe()

    async def _route(self, msg: Msg) -> None:
        send = self._routes.get(msg.subject[len(self._inbox) + 1 :])
        if send is None:
            return  # the request is gone (client left, or a late duplicate)
        try:
            send.send_nowait(msg.data)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            log.warning("work_queue.reply_dropped", subject=msg.subject)

    def forget(self, request_id: str) -> None:
        send = self._routes.pop(request_id, None)
        if send is not None:
            send.close()

    async def submit(
        self,
        kind: JobKind[Req, Rep],
        request: Req,
        *,
        queue: str = "",
        timeout: float | None = None,
        give_up: GiveUp | None = None,
    ) -> Pending[Rep]:
        """Queue ``request`` on ``kind``'s queue ``queue``. Raises QueueFull or BusUnavailable.

        The client sets the request's ``reply_to``, ``deadline`` (``timeout``, else the kind's
        ``request_timeout``) and ``submitted_at``. ``give_up`` is asked every ``GIVE_UP_CHECK_S`` while no
        worker has answered or said it holds the request; what it returns is raised by :meth:`Pending.next`
        (the caller then closes the request with ``cancel``, so it is never started).
        """
        settings = self.settings(kind)
        request_id = request.request_id
        now = time.time()
        deadline = now + (timeout or settings.request_timeout)
        request = msgspec.structs.replace(
            request, reply_to=f"{self._inbox}.{request_id}", deadline=deadline, submitted_at=now
        )
        if not self.nc.is_connected:
            raise BusUnavailable("The message bus is unavailable; retry shortly", retry_after=1)
        send, receive = anyio.create_memory_object_stream[bytes](BUFFERED_REPLIES)
        self._routes[request_id] = send
        try:
            await self._js.publish(
                kind.subject(queue), _encoder.encode(request), timeout=5, headers={"Nats-Msg-Id": request_id}
            )
        except APIError as exc:
            self.forget(request_id)
            if exc.err_code in QUEUE_FULL_CODES:
                raise QueueFull(
                    f"The {kind.label(queue)} queue is full; retry later", retry_after=settings.retry_after
                ) from exc
            raise BusUnavailable(f"The message bus refused the request: {exc}", retry_after=1) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            self.forget(request_id)
            raise BusUnavailable(
                f"The message bus is unavailable ({type(exc).__name__}); retry shortly", retry_after=1
            ) from exc
        except anyio.get_cancelled_exc_class():
            # the caller stopped while JetStream was taking it: it may be queued, so no worker may start it
            self.forget(request_id)
            with anyio.CancelScope(shield=True):
                await self.cancel(request_id)
            raise
        return Pending(
            self, kind, request_id, receive, deadline=deadline, keepalive=settings.keepalive, give_up=give_up
        )

    async def cancel(self, request_id: str) -> None:
        """Tell whichever worker holds (or will take) ``request_id`` to stop."""
        try:
            await self.nc.publish(cancel_subject(request_id), b"")
        except nats.errors.Error:
            log.warning("work_queue.cancel_not_sent", request_id=request_id)
