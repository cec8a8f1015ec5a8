"""The client side of chat on the bus: publish a request onto its model's work queue, route the replies.

The ingress uses it for HTTP clients, and the NSQL worker to ask a model for SQL. One inbox subscription
per process carries every reply; the last subject token says which HTTP
request it belongs to. Replies are checked for order (``seq``) and for a worker that went silent, so a
client never waits on a dead worker and never gets a stream with a hole in it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from types import TracebackType

import anyio
import msgspec
import nats.errors
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from modelbus.config import ChatSettings
from modelbus.runtime.jetstream import ensure_chat_stream
from modelbus.schemas.chat import ChatKeepalive, ChatReply, ChatRequest
from modelbus.schemas.subjects import cancel_subject, chat_subject

__all__ = ("BusUnavailable", "ChatDispatcher", "GiveUp", "PendingChat", "QueueFull", "ReplyLost")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(ChatReply)
BUFFERED_REPLIES = 4096
# JetStream's "maximum messages per subject exceeded" (the per-model queue bound, discard-new)
QUEUE_FULL_CODES = frozenset({10077})
SILENT_KEEPALIVES = 4  # a committed worker silent this many keepalive intervals is presumed dead
GIVE_UP_CHECK_S = 0.5  # how often a request still waiting for a worker asks whether to stop waiting

GiveUp = Callable[[], BaseException | None]
"""Asked while a request waits for its first answer: an exception to raise instead of waiting on, or None."""


class QueueFull(Exception):
    """The model's work queue is at its bound."""


class BusUnavailable(Exception):
    """NATS (or JetStream) cannot take the request right now."""


class ReplyLost(Exception):
    """The worker answering went silent, or a reply went missing."""


class PendingChat:
    """The replies to one request, in order, from the one worker that answers it."""

    def __init__(
        self,
        dispatcher: ChatDispatcher,
        request_id: str,
        receive: MemoryObjectReceiveStream[bytes],
        deadline: float,
        give_up: GiveUp | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self.request_id = request_id
        self._receive = receive
        self.deadline = deadline
        self._give_up = give_up
        self._worked_on: float | None = None  # when a worker last said it holds this request
        self.worker_id: str | None = None
        self._next_seq = 0
        self.finished = False

    async def next(self) -> ChatReply:
        """The next reply. Raises TimeoutError past the deadline, ReplyLost on silence or a gap."""
        while True:
            reply: ChatReply = _reply_decoder.decode(await self._receive_one())
            if self.worker_id is not None and reply.worker_id != self.worker_id:
                continue  # a late duplicate delivery answered too: only the first worker that answered counts
            if isinstance(reply, ChatKeepalive):
                self._worked_on = time.monotonic()  # a worker holds it (a sign of life; only an answer binds)
                continue
            self.worker_id = reply.worker_id
            if reply.seq != self._next_seq:
                raise ReplyLost(
                    f"reply {self._next_seq} of request {self.request_id} went missing (got {reply.seq})"
                )
            self._next_seq += 1
            return reply

    async def _receive_one(self) -> bytes:
        keepalive = self._dispatcher.settings.keepalive
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                raise TimeoutError
            # before a worker has answered, the request may wait in the queue until its deadline (or until
            # ``give_up`` says there is no point); once one has, it must keep talking
            if self.worker_id is not None:
                wait = min(remaining, keepalive * SILENT_KEEPALIVES)
            else:
                wait = remaining if self._give_up is None else min(remaining, GIVE_UP_CHECK_S)
            with anyio.move_on_after(wait):
                return await self._receive.receive()
            if self.worker_id is not None and self.deadline > time.time():
                raise ReplyLost(f"worker {self.worker_id} stopped answering")
            if self.worker_id is None and self._give_up is not None and not self._held(keepalive):
                reason = self._give_up()
                if reason is not None:
                    raise reason

    def _held(self, keepalive: float) -> bool:
        """Whether a worker has said recently that it holds this request (then it is not given up: a
        draining worker finishes what it holds, even after it has left the registry)."""
        return (
            self._worked_on is not None and time.monotonic() - self._worked_on < keepalive * SILENT_KEEPALIVES
        )

    async def close(self, *, cancel: bool) -> None:
        """Stop routing replies here; tell the worker to stop when the client did not get the whole answer."""
        self._dispatcher.forget(self.request_id)
        self._receive.close()
        if cancel:
            await self._dispatcher.cancel(self.request_id)


class ChatDispatcher:
    def __init__(self, nc: Client, settings: ChatSettings, *, ingress_id: str | None = None) -> None:
        self.nc = nc
        self.settings = settings
        self.ingress_id = ingress_id or uuid.uuid4().hex[:12]
        self._inbox = f"_INBOX.modelbus.{self.ingress_id}"
        self._routes: dict[str, MemoryObjectSendStream[bytes]] = {}
        self._sub: Subscription | None = None
        self._js = nc.jetstream()

    async def __aenter__(self) -> ChatDispatcher:
        await ensure_chat_stream(self._js, self.settings)
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
            return  # the HTTP request is gone (client left, or a late duplicate)
        try:
            send.send_nowait(msg.data)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            log.warning("chat.reply_dropped", subject=msg.subject)

    def forget(self, request_id: str) -> None:
        send = self._routes.pop(request_id, None)
        if send is not None:
            send.close()

    async def submit(
        self,
        model: str,
        body: bytes,
        *,
        request_id: str,
        stream: bool,
        include_usage: bool,
        traceparent: str | None,
        timeout: float | None = None,
        give_up: GiveUp | None = None,
    ) -> PendingChat:
        """Queue the request for ``model``'s workers. Raises QueueFull or BusUnavailable.

        ``give_up`` is asked every ``GIVE_UP_CHECK_S`` while no worker has answered or said it holds the
        request; what it returns is raised by :meth:`PendingChat.next` (the caller then cancels the request,
        so it is never started).
        """
        now = time.time()
        deadline = now + (timeout or self.settings.request_timeout)
        request = ChatRequest(
            request_id=request_id,
            model=model,
            body=msgspec.Raw(body),
            stream=stream,
            include_usage=include_usage,
            reply_to=self.reply_subject(request_id),
            deadline=deadline,
            traceparent=traceparent,
            submitted_at=now,
        )
        receive = await self.enqueue(chat_subject(model), _encoder.encode(request), request_id=request_id)
        return PendingChat(self, request_id, receive, deadline, give_up)

    def reply_subject(self, request_id: str) -> str:
        """Where replies to ``request_id`` must go to come back to this process."""
        return f"{self._inbox}.{request_id}"

    async def enqueue(
        self, subject: str, payload: bytes, *, request_id: str
    ) -> MemoryObjectReceiveStream[bytes]:
        """Publish onto a work queue, routing replies for ``request_id`` to the returned stream.

        Raises QueueFull when the queue is at its bound, BusUnavailable when NATS can't take it; the
        caller must :meth:`forget` the request once done with the replies.
        """
        if not self.nc.is_connected:
            raise BusUnavailable("not connected to NATS")
        send, receive = anyio.create_memory_object_stream[bytes](BUFFERED_REPLIES)
        self._routes[request_id] = send
        try:
            await self._js.publish(subject, payload, timeout=5, headers={"Nats-Msg-Id": request_id})
        except APIError as exc:
            self.forget(request_id)
            if exc.err_code in QUEUE_FULL_CODES:
                raise QueueFull(subject) from exc
            raise BusUnavailable(str(exc)) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            self.forget(request_id)
            raise BusUnavailable(type(exc).__name__) from exc
        return receive

    async def cancel(self, request_id: str) -> None:
        try:
            await self.nc.publish(cancel_subject(request_id), b"")
        except nats.errors.Error:
            log.warning("chat.cancel_not_sent", request_id=request_id)
