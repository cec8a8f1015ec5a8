"""The ingress's side of an NSQL reply: wait for it, put a reply sent in parts back together, check it whole.

The wire contract is :mod:`modelbus.schemas.nsql`: a reply that fits is one
:class:`~modelbus.schemas.nsql.NsqlReply`; a larger one is :class:`~modelbus.schemas.nsql.NsqlReplyPart`
``seq`` 0, 1, ... and then the reply with ``parts`` set. One worker's reply is put together; another worker's
messages are ignored unless they start a reply anew (the first stopped mid-reply and the request was delivered
again), which then replaces it. A part out of order, a count that does not match, a reply over ``max_bytes``,
or silence of :data:`PART_GAP_S` once parts have begun is :class:`ReplyBroken` (502 ``reply_incomplete``): a
body is delivered whole or not at all.
"""

from __future__ import annotations

import math
import time

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from modelbus.ingress.errors import ApiError
from modelbus.schemas.nsql import NsqlReply, NsqlReplyMessage, NsqlReplyPart

__all__ = ("PART_GAP_S", "Assembled", "ReplyAssembler", "ReplyBroken", "ReplyWaiter", "failure_of")

_decoder: msgspec.json.Decoder[NsqlReplyMessage] = msgspec.json.Decoder(NsqlReplyMessage)
# a worker publishes a reply's parts back to back: this long without the next one means it was lost
PART_GAP_S = 10.0


class ReplyBroken(Exception):
    """The reply cannot be delivered whole."""


class Assembled(msgspec.Struct, frozen=True, kw_only=True):
    reply: NsqlReply
    body: bytes  # the whole body (the reply's own ``body`` is empty when it came in parts)


class ReplyAssembler:
    """Fed each message of one request's reply in arrival order; answers the reply once it is whole."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.worker_id: str | None = None
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def in_parts(self) -> bool:
        """Whether parts have begun (a gap then means one was lost)."""
        return bool(self._parts)

    def feed(self, raw: bytes) -> Assembled | None:
        try:
            message = _decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ReplyBroken(f"the NSQL worker's reply could not be read: {exc}") from exc
        if self.worker_id is not None and message.worker_id != self.worker_id:
            if not _starts(message):
                return None  # the rest of another delivery's reply: only one worker's reply counts
            # another delivery starts over (the first worker stopped mid-reply and its request was handed on)
            self._parts.clear()
            self._size = 0
        self.worker_id = message.worker_id
        if isinstance(message, NsqlReplyPart):
            if message.seq != len(self._parts):
                raise ReplyBroken(
                    f"part {len(self._parts)} of the reply went missing (got part {message.seq})"
                )
            self._size += len(message.data)
            if self._size > self.max_bytes:
                raise ReplyBroken(
                    f"the reply is larger than this ingress accepts ({self.max_bytes} bytes, "
                    "runtime.nsql.max_reply_bytes)"
                )
            self._parts.append(message.data)
            return None
        if message.parts != len(self._parts):
            raise ReplyBroken(f"the reply announced {message.parts} part(s); {len(self._parts)} arrived")
        body = b"".join(self._parts) if message.parts else message.body.encode()
        self._parts.clear()
        return Assembled(reply=message, body=body)


def _starts(message: NsqlReplyMessage) -> bool:
    """Whether a message begins a reply: its first part, or a reply that came in one message."""
    return message.seq == 0 if isinstance(message, NsqlReplyPart) else message.parts == 0


class ReplyWaiter:
    """Waits on the replies routed to one request until the whole reply is there."""

    def __init__(
        self,
        replies: MemoryObjectReceiveStream[bytes],
        *,
        deadline: float,
        max_bytes: int,
        part_gap: float = PART_GAP_S,
    ) -> None:
        self._replies = replies
        self.deadline = deadline  # unix seconds
        self.part_gap = part_gap
        self._assembler = ReplyAssembler(max_bytes)

    async def wait(self, tick: float | None = None) -> Assembled | None:
        """The whole reply, or None when ``tick`` seconds passed first (the caller may call again).

        Raises TimeoutError past the deadline, :class:`ReplyBroken` when the reply cannot be whole.
        """
        tick_end = math.inf if tick is None else time.monotonic() + tick
        last = time.monotonic()
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                raise TimeoutError
            now = time.monotonic()
            if now >= tick_end:
                return None
            wait = min(remaining, tick_end - now)
            if self._assembler.in_parts:
                if now - last >= self.part_gap:
                    raise ReplyBroken(f"the reply stopped arriving for {self.part_gap:g} s, before its end")
                wait = min(wait, self.part_gap - (now - last))
            with anyio.move_on_after(wait):
                try:
                    raw = await self._replies.receive()
                except anyio.EndOfStream as exc:
                    raise ReplyBroken("the reply's route was closed") from exc
                last = time.monotonic()
                done = self._assembler.feed(raw)
                if done is not None:
                    return done


def failure_of(reply: NsqlReply) -> ApiError:
    """A worker's error reply as the error the client gets (the same status and code)."""
    return ApiError(
        reply.status,
        reply.error_message or "NSQL failed",
        code=reply.error_code or "nsql_failed",
        headers={"Retry-After": "1"} if reply.error_code == "model_not_ready" else None,
    )
