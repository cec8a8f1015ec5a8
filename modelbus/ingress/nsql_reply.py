"""The ingress's side of an NSQL reply: wait for it, put a reply sent in parts back together, check it whole.

The wire contract is :mod:`modelbus.schemas.nsql`: a reply that fits is one
:class:`~modelbus.schemas.nsql.NsqlReply`; a larger one is :class:`~modelbus.schemas.nsql.NsqlReplyPart`
``seq`` 0, 1, ... and then the reply. The job's :class:`~modelbus.runtime.work_queue.client.Pending` already
passes on only one worker's replies, in order and without a gap, and notices a worker that goes silent
(NSQL commits at the result, so another delivery that starts over at ``seq`` 0 replaces an unfinished one);
here the parts are joined, bounded by ``max_bytes``. A reply over it is
:class:`~modelbus.runtime.work_queue.errors.ReplyIncomplete` (502 ``reply_incomplete``): a body is delivered
whole or not at all.
"""

from __future__ import annotations

import msgspec

from modelbus.ingress.errors import ApiError
from modelbus.runtime.work_queue.client import Pending
from modelbus.runtime.work_queue.errors import ReplyIncomplete
from modelbus.schemas.nsql import NsqlReply, NsqlReplyMessage, NsqlReplyPart

__all__ = ("Assembled", "ReplyAssembler", "ReplyReader", "failure_of")


class Assembled(msgspec.Struct, frozen=True, kw_only=True):
    reply: NsqlReply
    body: bytes  # the whole body (the reply's own ``body`` is empty when it came in parts)


class ReplyAssembler:
    """Fed one request's replies as :class:`Pending` passes them on; answers the reply once it is whole."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, message: NsqlReplyMessage) -> Assembled | None:
        if message.seq == 0:  # an answer starts (again, when another delivery replaced an unfinished one)
            self._parts.clear()
            self._size = 0
        if isinstance(message, NsqlReplyPart):
            self._size += len(message.data)
            if self._size > self.max_bytes:
                raise ReplyIncomplete(
                    f"the reply is larger than this ingress accepts ({self.max_bytes} bytes, "
                    "runtime.nsql.max_reply_bytes)"
                )
            self._parts.append(message.data)
            return None
        body = b"".join(self._parts) if message.parts else message.body.encode()
        self._parts.clear()
        return Assembled(reply=message, body=body)


class ReplyReader:
    """The whole reply of one NSQL job, from its replies."""

    def __init__(self, pending: Pending[NsqlReplyMessage], *, max_bytes: int) -> None:
        self.pending = pending
        self._assembler = ReplyAssembler(max_bytes)

    async def wait(self, tick: float | None = None) -> Assembled | None:
        """The whole reply, or None when ``tick`` seconds passed without a message (call again).

        Raises the bus's failures: DeadlinePassed, ReplyLost, ReplyIncomplete.
        """
        while True:
            message = await self.pending.wait(tick)
            if message is None:
                return None
            done = self._assembler.feed(message)
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
