"""An NSQL reply larger than one bus message: split by the worker, put back together by the ingress, whole or
refused (a part missing, out of order, or never followed by the reply is an error, never a shorter body).

The ingress reads replies through the job's Pending, which passes on one worker's replies in order
(:class:`ReplyOrder`, the rule every job kind shares); the assembler joins them."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from nats.aio.client import Client

from modelbus.ingress.nsql_reply import Assembled, ReplyAssembler, ReplyReader
from modelbus.ingress.nsql_stream import data_event
from modelbus.runtime.work_queue.client import Pending, WorkQueueClient
from modelbus.runtime.work_queue.errors import ReplyIncomplete, ReplyLost
from modelbus.runtime.work_queue.order import ReplyOrder
from modelbus.schemas.nsql import NSQL, NsqlReply, NsqlReplyMessage
from modelbus.workers.nsql.reply_parts import reply_messages

MAX_PAYLOAD = 700
# multi-byte characters, so that parts cut UTF-8 sequences in the middle
BODY = "".join(f'{{"row":{i},"note":"é✓ \\"quoted\\" ⚙"}}\n' for i in range(200))


def reply(body: str = BODY, *, worker_id: str = "nsql-a") -> NsqlReply:
    return NsqlReply(
        request_id="r1", worker_id=worker_id, status=200, content_type="text/csv", body=body, sql="SELECT 1"
    )


_decoder: msgspec.json.Decoder[NsqlReplyMessage] = msgspec.json.Decoder(NsqlReplyMessage)


class Receiver:
    """What the ingress does with one request's messages: keep them in order, then join the parts."""

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.order = ReplyOrder(NSQL.commit)
        self.assembler = ReplyAssembler(max_bytes)

    def feed(self, raw: bytes) -> Assembled | None:
        message = _decoder.decode(raw)
        return self.assembler.feed(message) if self.order.accept(message) else None


def assemble(messages: list[bytes], max_bytes: int = 1 << 20) -> tuple[NsqlReply, bytes]:
    receiver = Receiver(max_bytes)
    results = [receiver.feed(m) for m in messages]
    done = [r for r in results if r is not None]
    assert len(done) == 1 and results[-1] is done[0]
    return done[0].reply, done[0].body


def feed_all(receiver: Receiver, messages: list[bytes]) -> None:
    """Feed every message; none may complete the reply."""
    for message in messages:
        assert receiver.feed(message) is None


def pending(*messages: bytes, keepalive: float = 1.0) -> Pending[NsqlReplyMessage]:
    """A request's replies as the client's subscription would deliver them (here from the test, not NATS)."""
    client = WorkQueueClient(Client(), {})  # never connected
    waiting: Pending[NsqlReplyMessage] = Pending(
        client, NSQL, "r1", deadline=float("inf"), keepalive=keepalive
    )
    for message in messages:
        waiting.deliver(message)
    return waiting


def test_a_reply_that_fits_stays_one_message_of_the_old_shape() -> None:
    messages = list(reply_messages(reply("[]"), MAX_PAYLOAD))
    assert len(messages) == 1
    assert msgspec.json.decode(messages[0], type=NsqlReply).body == "[]"  # what an older ingress reads
    assert assemble(messages)[1] == b"[]"


def test_a_large_reply_goes_in_parts_within_max_payload_and_comes_back_whole() -> None:
    messages = list(reply_messages(reply(), MAX_PAYLOAD))
    assert len(messages) > 10
    assert all(len(m) <= MAX_PAYLOAD for m in messages)
    got, body = assemble(messages)
    assert body == BODY.encode()
    assert (got.status, got.content_type, got.sql, got.body) == (200, "text/csv", "SELECT 1", "")
    assert got.parts == len(messages) - 1


@pytest.mark.parametrize("damage", ["missing", "swapped", "last_part_lost", "duplicated"])
def test_a_damaged_sequence_is_refused_not_shortened(damage: str) -> None:
    messages = list(reply_messages(reply(), MAX_PAYLOAD))
    if damage == "missing":
        del messages[3]
    elif damage == "swapped":
        messages[2], messages[3] = messages[3], messages[2]
    elif damage == "last_part_lost":
        del messages[-2]
    else:
        messages.insert(4, messages[3])
    with pytest.raises(ReplyIncomplete):
        feed_all(Receiver(), messages)


def test_a_reply_over_the_limit_is_refused_while_it_arrives() -> None:
    messages = list(reply_messages(reply(), MAX_PAYLOAD))
    with pytest.raises(ReplyIncomplete, match="larger than this ingress accepts"):
        feed_all(Receiver(max_bytes=len(BODY.encode()) // 2), messages)


def test_only_one_workers_reply_counts_and_a_fresh_delivery_replaces_an_unfinished_one() -> None:
    first = list(reply_messages(reply(), MAX_PAYLOAD))
    second = list(reply_messages(reply(BODY.upper(), worker_id="nsql-b"), MAX_PAYLOAD))
    # worker a stops after three parts; worker b answers the redelivered request from the start
    _, body = assemble(first[:3] + second)
    assert body == BODY.upper().encode()
    # worker b's stray parts in the middle of worker a's reply are not mixed in
    _, body = assemble(first[:3] + second[1:4] + first[3:])
    assert body == BODY.encode()


async def test_a_reply_that_stops_arriving_is_refused_before_the_deadline() -> None:
    messages = list(reply_messages(reply(), MAX_PAYLOAD))
    # the reply itself never comes
    reader = ReplyReader(pending(*messages[:-1], keepalive=0.025), max_bytes=1 << 20)
    with anyio.fail_after(30), pytest.raises(ReplyLost, match="stopped answering"):
        await reader.wait()


async def test_the_waiter_ticks_while_nothing_came_then_answers() -> None:
    waiting = pending()
    reader = ReplyReader(waiting, max_bytes=1 << 20)
    assert await reader.wait(tick=0.01) is None
    for message in reply_messages(reply(), MAX_PAYLOAD):
        waiting.deliver(message)
    with anyio.fail_after(30):
        got = await reader.wait(tick=0.01)
    assert got is not None and got.body == BODY.encode()


def test_an_sse_data_event_carries_any_body_line_by_line() -> None:
    assert data_event(b'[{"a":1}]') == b'data: [{"a":1}]\n\n'
    # every line end becomes a data line; the client joins them with \n
    assert data_event(b"a,b\r\n1,2\r\n") == b"data: a,b\ndata: 1,2\ndata: \n\n"
    assert data_event(b"SELECT 1\n") == b"data: SELECT 1\ndata: \n\n"
    assert data_event(b"|  1 |\r| 2 |") == b"data: |  1 |\ndata: | 2 |\n\n"
