"""An :class:`~modelbus.schemas.nsql.NsqlReply` as the bus messages that carry it, each within
``max_payload``.

A reply that fits is one message, as it always was. A larger one is its body's UTF-8 bytes in
:class:`~modelbus.schemas.nsql.NsqlReplyPart` messages, in order, then the reply itself with ``parts`` set and
an empty body (the contract is in :mod:`modelbus.schemas.nsql`). The parts are encoded one at a time, so
sending holds the body plus one message, not a second copy of the whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from modelbus.schemas.nsql import NsqlReply, NsqlReplyPart

__all__ = ("part_size", "reply_messages")

_encoder = msgspec.json.Encoder()
HEADROOM = 256  # bytes kept free in every part besides its measured envelope


def part_size(reply: NsqlReply, max_payload: int) -> int:
    """How many body bytes one part carries: base64 makes 3 bytes 4, after the part's own fields."""
    empty = NsqlReplyPart(request_id=reply.request_id, worker_id=reply.worker_id, seq=10**9, data=b"")
    room = max_payload - len(_encoder.encode(empty)) - HEADROOM
    size = room // 4 * 3
    if size <= 0:
        raise ValueError(f"max_payload {max_payload} cannot carry a reply part")
    return size


def reply_messages(reply: NsqlReply, max_payload: int) -> Iterator[bytes]:
    """The encoded messages to publish, in order, for ``reply``."""
    if len(reply.body) < max_payload:  # characters: the encoded reply is never shorter
        whole = _encoder.encode(reply)
        if len(whole) <= max_payload:
            yield whole
            return
    body = reply.body.encode()
    size = part_size(reply, max_payload)
    count = 0
    for start in range(0, len(body), size):
        part = NsqlReplyPart(
            request_id=reply.request_id, worker_id=reply.worker_id, seq=count, data=body[start : start + size]
        )
        count += 1
        yield _encoder.encode(part)
    yield _encoder.encode(msgspec.structs.replace(reply, body="", parts=count))
