"""An :class:`~modelbus.schemas.nsql.NsqlReply` as the bus messages that carry it, each within max_payload.

A reply that fits is one message. A larger one is its body's UTF-8 bytes in
:class:`~modelbus.schemas.nsql.NsqlReplyPart` messages, in order, then the reply itself with an empty body
(the contract is in :mod:`modelbus.schemas.nsql`). The parts are encoded one at a time, so sending holds the
body plus one message, not a second copy of the whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import msgspec

from modelbus.schemas.nsql import NsqlReply, NsqlReplyPart

__all__ = ("part_size", "reply_messages")

_encoder = msgspec.json.Encoder()
HEADROOM = 256  # bytes kept free in every part besides its measured envelope
Stamp = Callable[[], dict[str, Any]]


def part_size(reply: NsqlReply, max_payload: int) -> int:
    """How many body bytes one part carries: base64 makes 3 bytes 4, after the part's own fields."""
    empty = NsqlReplyPart(request_id=reply.request_id, worker_id=reply.worker_id, seq=10**9, data=b"")
    room = max_payload - len(_encoder.encode(empty)) - HEADROOM
    size = room // 4 * 3
    if size <= 0:
        raise ValueError(f"max_payload {max_payload} cannot carry a reply part")
    return size


def _numbered(reply: NsqlReply) -> Stamp:
    seqs = count()
    return lambda: {"request_id": reply.request_id, "worker_id": reply.worker_id, "seq": next(seqs)}


def reply_messages(reply: NsqlReply, max_payload: int, stamp: Stamp | None = None) -> Iterator[bytes]:
    """The encoded messages to publish, in order, for ``reply``; ``stamp`` numbers them (the job's own)."""
    stamp = stamp or _numbered(reply)
    if len(reply.body) < max_payload:  # characters: the encoded reply is never shorter
        whole = _encoder.encode(reply)
        if len(whole) <= max_payload:
            envelope = stamp()
            if envelope["seq"] == reply.seq:
                yield whole  # the usual case: one message, the job's first reply
            else:
                yield _encoder.encode(msgspec.structs.replace(reply, **envelope))
            return
    yield from _in_parts(reply, max_payload, stamp)


def _in_parts(reply: NsqlReply, max_payload: int, stamp: Stamp) -> Iterator[bytes]:
    body = reply.body.encode()
    size = part_size(reply, max_payload)
    for start in range(0, len(body), size):
        yield _encoder.encode(NsqlReplyPart(**stamp(), data=body[start : start + size]))
    yield _encoder.encode(msgspec.structs.replace(reply, **stamp(), body=""))
