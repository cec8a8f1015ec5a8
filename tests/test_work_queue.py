"""The work-queue runtime on its own, with a kind of job made up here: its Structs, a handler, and nothing
else, as a new kind in modelbus would be. The client and the consumer run on a real nats-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client

from modelbus.config import HistorySettings, QueueSettings
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.work_queue.cancellation import Cancellations
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.runtime.work_queue.consumer import Job, JobConsumer
from modelbus.runtime.work_queue.errors import DeadlinePassed, JobFailed, QueueFull, ReplyLost
from modelbus.schemas.jobs import CommitPoint, JobKind, JobReply, JobRequest, Keepalive


class EchoRequest(JobRequest, frozen=True, kw_only=True, tag="test.echo_request"):
    text: str
    parts: int = 1
    hold_s: float = 0.0  # how long the handler works before answering
    fail: str = ""  # "job": a JobFailed; "bug": an unexpected exception


class EchoPart(JobReply, frozen=True, tag="test.echo_part"):
    text: str


class EchoFailure(JobReply, frozen=True, tag="test.echo_error"):
    status: int
    message: str
    code: str | None = None


def _failure(*, status: int, message: str, code: str | None, error_type: str, param: str | None,
             **envelope: Any) -> EchoFailure:  # fmt: skip
    del error_type, param
    return EchoFailure(**envelope, status=status, message=message, code=code)


def echo_kind(commit: CommitPoint) -> JobKind[EchoRequest, EchoPart | EchoFailure]:
    name = f"echo_{commit.value}"
    return JobKind(
        name=name, stream=name.upper(), wildcard=f"test.{name}", subject=lambda _q: f"test.{name}",
        durable=lambda _q: name, request=EchoRequest, replies=EchoPart | EchoFailure, commit=commit,
        failure=_failure, worker="echo worker", label=lambda _q: "echo", task="echo",
    )  # fmt: skip


class EchoHandler:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.ended: list[tuple[str, int, str | None]] = []
        self.handed_back: list[str] = []

    def describe(self, request: EchoRequest) -> Mapping[str, Any]:
        return {"parts": request.parts}

    async def handle(self, job: Job[EchoRequest]) -> None:
        request = job.request
        self.started.append(request.request_id)
        try:
            await anyio.sleep(request.hold_s)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(request.request_id)
            raise
        if request.fail == "job":
            raise JobFailed(409, "the echo refuses", code="refused")
        if request.fail == "bug":
            raise RuntimeError("a bug")
        for i in range(request.parts):
            await job.send(EchoPart(**job.stamp(), text=f"{request.text}-{i}"))

    def done(self, job: Job[EchoRequest], seconds: float) -> None:
        if job.handed_back:
            self.handed_back.append(job.request.request_id)
        else:
            self.ended.append((job.request.request_id, job.status, job.error_code))


SETTINGS = QueueSettings(queue_depth=4, request_timeout=10, ack_wait=1.0, keepalive=0.2, retry_after=3)


@asynccontextmanager
async def echo_worker(
    nc: Client, kind: JobKind[EchoRequest, Any], handler: EchoHandler, *, capacity: int = 2,
    worker_id: str = "echo-1",
) -> AsyncIterator[JobConsumer[EchoRequest]]:  # fmt: skip
    cancellations = Cancellations()
    await cancellations.subscribe(nc)
    recorder = TaskRecorder(nc, HistorySettings(enabled=False), component="echo")
    consumer = JobConsumer(
        nc, kind, handler, worker_id=worker_id, settings=SETTINGS, cancellations=cancellations,
        recorder=recorder, capacity=lambda: capacity,
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        try:
            yield consumer
        finally:
            consumer.stop_intake()
            tg.cancel_scope.cancel()
            await cancellations.unsubscribe()


def request(text: str, **fields: Any) -> EchoRequest:
    return EchoRequest(request_id=uuid.uuid4().hex, text=text, **fields)


async def answers(client: WorkQueueClient, kind: JobKind[EchoRequest, Any], job: EchoRequest) -> list[Any]:
    pending = await client.submit(kind, job)
    replies: list[Any] = []
    try:
        with anyio.fail_after(20):
            while len(replies) < job.parts:
                reply = await pending.next()
                replies.append(reply)
                if isinstance(reply, EchoFailure):
                    break
    finally:
        await pending.close(cancel=False)
    return replies


@pytest.mark.parametrize("commit", list(CommitPoint))
async def test_a_kind_is_its_structs_and_a_handler(nc: Client, commit: CommitPoint) -> None:
    kind, handler = echo_kind(commit), EchoHandler()
    async with WorkQueueClient(nc, {kind: SETTINGS}) as client, echo_worker(nc, kind, handler):
        replies = await answers(client, kind, request("hi", parts=3))
        assert [(r.seq, r.text, r.worker_id) for r in replies] == [
            (0, "hi-0", "echo-1"), (1, "hi-1", "echo-1"), (2, "hi-2", "echo-1")
        ]  # fmt: skip

        refused = await answers(client, kind, request("no", fail="job"))
        assert [(r.status, r.code, r.message) for r in refused] == [(409, "refused", "the echo refuses")]

        broken = await answers(client, kind, request("bug", fail="bug"))
        assert [(r.status, r.code) for r in broken] == [(500, "internal")]
        assert "echo worker failed" in broken[0].message

        with anyio.fail_after(5):
            while len(handler.ended) < 3:
                await anyio.sleep(0.01)
        assert [status for _id, status, _code in handler.ended] == [200, 409, 500]


async def test_the_deadline_is_a_504_on_both_sides(nc: Client) -> None:
    kind, handler = echo_kind(CommitPoint.RESULT), EchoHandler()
    async with WorkQueueClient(nc, {kind: SETTINGS}) as client, echo_worker(nc, kind, handler):
        slow = request("slow", hold_s=5)
        pending = await client.submit(kind, slow, timeout=0.5)
        with pytest.raises(DeadlinePassed) as caught:
            await pending.next()
        await pending.close(cancel=False)
        assert (caught.value.status, caught.value.code) == (504, "timeout")
        with anyio.fail_after(5):
            while not handler.ended:
                await anyio.sleep(0.01)
        assert handler.ended == [(slow.request_id, 504, "timeout")]  # the worker stopped at the deadline


async def test_a_cancelled_job_stops_and_is_not_delivered_again(nc: Client) -> None:
    kind, handler = echo_kind(CommitPoint.RESULT), EchoHandler()
    async with WorkQueueClient(nc, {kind: SETTINGS}) as client, echo_worker(nc, kind, handler):
        job = request("long", hold_s=30)
        pending = await client.submit(kind, job)
        with anyio.fail_after(5):
            while not handler.started:
                await anyio.sleep(0.01)
        await pending.close(cancel=True)
        with anyio.fail_after(5):
            while not handler.ended:
                await anyio.sleep(0.01)
        assert handler.cancelled == [job.request_id]
        assert handler.ended == [(job.request_id, 499, "client_closed")]
        await anyio.sleep(SETTINGS.ack_wait * 2)  # past ack_wait: a job that was not acked would come back
        assert handler.started == [job.request_id]


async def test_a_worker_that_stops_before_its_result_hands_the_job_to_another(nc: Client) -> None:
    kind = echo_kind(CommitPoint.RESULT)
    first, second = EchoHandler(), EchoHandler()
    async with WorkQueueClient(nc, {kind: SETTINGS}) as client:
        job = request("redo", hold_s=1.0, parts=2)
        pending = await client.submit(kind, job)
        async with echo_worker(nc, kind, first, worker_id="echo-1"):
            with anyio.fail_after(5):
                while not first.started:
                    await anyio.sleep(0.01)
        # echo-1 left holding it: handed back (nak), so echo-2 answers, and the client sees one whole answer
        async with echo_worker(nc, kind, second, worker_id="echo-2"):
            with anyio.fail_after(20):
                replies = [await pending.next(), await pending.next()]
        await pending.close(cancel=False)
        assert [(r.worker_id, r.text) for r in replies] == [("echo-2", "redo-0"), ("echo-2", "redo-1")]
        assert (first.handed_back, first.ended) == ([job.request_id], [])
        assert second.ended == [(job.request_id, 200, None)]


async def test_a_worker_gone_silent_after_answering_is_lost_not_waited_for(nc: Client) -> None:
    kind = echo_kind(CommitPoint.FIRST_REPLY)
    async with WorkQueueClient(nc, {kind: SETTINGS}) as client:
        sub = await nc.subscribe(kind.subject(""))  # playing a worker that answers once, then dies
        pending = await client.submit(kind, request("once", parts=2))
        job = msgspec.json.decode((await sub.next_msg(timeout=5)).data, type=EchoRequest)
        beat = Keepalive(request_id=job.request_id, worker_id="ghost", seq=-1)
        await nc.publish(job.reply_to, msgspec.json.encode(beat))
        part = EchoPart(request_id=job.request_id, worker_id="ghost", seq=0, text="once-0")
        await nc.publish(job.reply_to, msgspec.json.encode(part))
        assert (await pending.next()).text == "once-0"
        with anyio.fail_after(10), pytest.raises(ReplyLost) as caught:
            await pending.next()
        assert (caught.value.status, caught.value.code) == (502, "worker_lost")
        await pending.close(cancel=True)


async def test_a_full_queue_refuses_with_its_retry_after(nc: Client) -> None:
    kind = echo_kind(CommitPoint.RESULT)
    async with WorkQueueClient(nc, {kind: SETTINGS}) as client:  # no worker: the queue only fills
        waiting = [await client.submit(kind, request(f"q{i}")) for i in range(SETTINGS.queue_depth)]
        with pytest.raises(QueueFull) as caught:
            await client.submit(kind, request("one too many"))
        assert (caught.value.status, caught.value.code, caught.value.retry_after) == (429, "queue_full", 3)
        assert "echo queue is full" in caught.value.message
        for pending in waiting:
            await pending.close(cancel=True)
