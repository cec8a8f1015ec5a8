"""The client side of every kind of job: publish a request onto its work queue, route the replies back.

The ingress uses it for HTTP clients, and the NSQL worker to ask a model for SQL. One inbox subscription per
process carries every reply; the last subject token says which request it belongs to. :class:`Pending`
checks the replies for order (``seq``) and for a worker that went silent, so a client never waits on a
dead worker and never gets an answer with a hole in it. Failures are :mod:`.errors`.

This is every request's path, so it is written on asyncio's own primitives (a deque and one future per
wait, timers from ``call_later``) rather than anyio's streams and cancel scopes, which cost several times
more; anyio's cancellation still reaches it, as a cancelled task. A job is published as a plain message with
a reply subject of this client's, and JetStream's acknowledgement (or its error) is read there with msgspec.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import anyio
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

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
PUBLISH_TIMEOUT_S = 5.0  # how long JetStream may take to acknowledge a job
GIVE_UP_CHECK_S = 0.5  # how often a request still waiting for a worker asks whether to stop waiting

Req = TypeVar("Req", bound=JobRequest)
Rep = TypeVar("Rep", bound=JobReply)

GiveUp = Callable[[], BaseException | None]
"""Asked while a request waits for its first answer: an exception to raise instead of waiting on, or None."""


F = TypeVar("F")


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _within(
    waiter: asyncio.Future[F], timeout: float, expire: Callable[[asyncio.Future[F]], None]
) -> F:
    """``waiter``'s result, or what ``expire`` makes of it after ``timeout`` seconds (resolve it, or fail it
    with TimeoutError): one timer, not a cancel scope."""
    timer = asyncio.get_running_loop().call_later(max(0.0, timeout), expire, waiter)
    try:
        return await waiter
    finally:
        timer.cancel()


class Pending(Generic[Rep]):
    """The replies to one request, in order, from the one worker that answers it."""

    __slots__ = (
        "_client", "_closed", "_decoder", "_finished", "_give_up", "_keepalive", "_order", "_replies",
        "_waiter", "_worked_on", "deadline", "kind", "request_id",
    )  # fmt: skip

    def __init__(
        self,
        client: WorkQueueClient,
        kind: JobKind[Any, Rep],
        request_id: str,
        *,
        deadline: float,
        keepalive: float,
        give_up: GiveUp | None = None,
    ) -> None:
        self._client = client
        self.kind = kind
        self.request_id = request_id
        self._replies: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.deadline = deadline
        self._keepalive = keepalive
        self._give_up = give_up
        self._decoder: msgspec.json.Decoder[Any] = _decoder(kind)
        self._order = ReplyOrder(kind.commit)
        self._worked_on: float | None = None  # when a worker last said it holds this request
        self._closed = False  # the route is gone: no more replies will come
        self._finished = False  # close() was called

    @property
    def worker_id(self) -> str | None:
        """The worker whose answer this is (None until one answered)."""
        return self._order.worker_id

    def deliver(self, data: bytes) -> None:
        """A message on this request's route (called by the client's subscription)."""
        if len(self._replies) >= BUFFERED_REPLIES:
            log.warning("work_queue.reply_dropped", request_id=self.request_id)
            return
        self._replies.append(data)
        if self._waiter is not None:
            _wake(self._waiter)

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
            if self._replies:
                return self._replies.popleft()
            if self._closed:
                raise ReplyIncomplete("the request's reply route was closed")
            bound = self._order.worker_id is not None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await _within(self._waiter, self._patience(remaining, tick_end, bound=bound), _wake)
            finally:
                self._waiter = None
            if self._replies or self._closed:
                continue
            if tick_end is not None and time.monotonic() >= tick_end:
                return None
            if bound and self.deadline > time.time():
                raise ReplyLost(f"the {self.kind.worker} {self._order.worker_id} stopped answering")
            if not bound and self._give_up is not None and not self._held():
                reason = self._give_up()
                if reason is not None:
                    raise reason

    def _patience(self, remaining: float, tick_end: float | None, *, bound: bool) -> float:
        """How long to wait for the next message: before a worker has answered, the request may wait in the
        queue until its deadline (or until ``give_up`` says there is no point); once one has, it must keep
        talking."""
        if bound:
            wait = min(remaining, self._keepalive * SILENT_KEEPALIVES)
        else:
            wait = remaining if self._give_up is None else min(remaining, GIVE_UP_CHECK_S)
        if tick_end is not None:
            wait = min(wait, max(0.0, tick_end - time.monotonic()))
        return wait

    def _held(self) -> bool:
        """Whether a worker has said recently that it holds this request (then it is not given up: a
        draining worker finishes what it holds, even after it has left the registry)."""
        return (
            self._worked_on is not None
            and time.monotonic() - self._worked_on < self._keepalive * SILENT_KEEPALIVES
        )

    def end(self) -> None:
        """Stop routing replies here (what is already here can still be read)."""
        self._closed = True
        if self._waiter is not None:
            _wake(self._waiter)

    async def close(self, *, cancel: bool) -> None:
        """Stop routing replies here; tell the worker to stop when the client did not get the whole answer."""
        if self._finished:
            return
        self._finished = True
        self._client.forget(self.request_id)
        self._replies.clear()
        if cancel:
            await self._client.cancel(self.request_id)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish: the stream and sequence, or an error."""

    stream: str = ""
    seq: int = 0
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class _Refused(Exception):
    def __init__(self, error: _ApiError) -> None:
        super().__init__(error.description)
        self.error = error


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
        self._routes: dict[str, Pending[Any]] = {}
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        self._subs: list[Subscription] = []
        self._js = nc.jetstream()

    def settings(self, kind: JobKind[Any, Any]) -> QueueSettings:
        return self._queues[kind.name][1]

    async def __aenter__(self) -> WorkQueueClient:
        for kind, settings in self._queues.values():
            await ensure_work_queue(self._js, kind, settings)
        self._subs.append(await self.nc.subscribe(f"{self._inbox}.*", cb=self._route))
        self._subs.append(await self.nc.subscribe(f"{self._inbox}.ack.*", cb=self._acked))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.move_on_after(2, shield=True):
            for sub in self._subs:
                await sub.unsubscribe()

    async def _route(self, msg: Msg) -> None:
        pending = self._routes.get(msg.subject[len(self._inbox) + 1 :])
        if pending is not None:  # else the request is gone (client left, or a late duplicate)
            pending.deliver(msg.data)

    async def _acked(self, msg: Msg) -> None:
        waiter = self._acks.get(msg.subject[len(self._inbox) + 5 :])
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    def forget(self, request_id: str) -> None:
        pending = self._routes.pop(request_id, None)
        if pending is not None:
            pending.end()

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
        pending: Pending[Rep] = Pending(
            self, kind, request_id, deadline=deadline, keepalive=settings.keepalive, give_up=give_up
        )
        self._routes[request_id] = pending
        try:
            await self._publish(kind.subject(queue), _encoder.encode(request), request_id)
        except _Refused as exc:
            self.forget(request_id)
            if exc.error.err_code in QUEUE_FULL_CODES:
                raise QueueFull(
                    f"The {kind.label(queue)} queue is full; retry later", retry_after=settings.retry_after
                ) from None
            raise BusUnavailable(
                f"The message bus refused the request: {exc.error.description} (code {exc.error.err_code})",
                retry_after=1,
            ) from None
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
        return pending

    async def _publish(self, subject: str, data: bytes, request_id: str) -> None:
        """Publish onto the work queue and wait for JetStream's acknowledgement (what ``js.publish`` does,
        without its per-call inbox and JSON parsing). Raises _Refused, TimeoutError or nats errors."""
        waiter: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[request_id] = waiter
        try:
            await self.nc.publish(
                subject, data, reply=f"{self._inbox}.ack.{request_id}", headers={"Nats-Msg-Id": request_id}
            )
            msg = await _within(waiter, PUBLISH_TIMEOUT_S, _time_out)
        finally:
            self._acks.pop(request_id, None)
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        ack = _ack_decoder.decode(msg.data)
        if ack.error is not None:
            raise _Refused(ack.error)

    async def cancel(self, request_id: str) -> None:
        """Tell whichever worker holds (or will take) ``request_id`` to stop."""
        try:
            await self.nc.publish(cancel_subject(request_id), b"")
        except nats.errors.Error:
            log.warning("work_queue.cancel_not_sent", request_id=request_id)
