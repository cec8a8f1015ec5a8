"""The worker side of every kind of job: pull into free slots, and own each job's life from message to ack.

A kind supplies a :class:`JobHandler` (what to log about a request, how to answer it, what to count when it
ends); :class:`JobConsumer` does the rest, the same for every kind:

- decode the message; a malformed one is terminated (no one can be answering it);
- skip a job whose deadline passed, or whose client cancelled it, while it was queued;
- run the handler under the job's deadline (504 ``timeout`` past it) and its client's cancellation
  (``modelbus.v1.cancel.<request_id>``);
- acknowledge at the kind's commit point (:class:`~modelbus.schemas.jobs.CommitPoint`): before it, a worker
  that stops hands the job back (``nak``) and another answers it; after it, a failure is the kind's error
  reply (a handler's :class:`~.errors.JobFailed` as it is, anything unexpected as a 500 ``internal``);
- keep it alive: ``in_progress`` to JetStream until committed, and a keep-alive to the client whenever it
  has heard nothing for ``keepalive``;
- one log line per job (``<kind>.request``) with its outcome, and its span in the task history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.abc
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from modelbus.config import QueueSettings
from modelbus.runtime.jetstream import ensure_consumer, ensure_work_queue, work_queue_consumer
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.span import TaskSpan, outcome_of
from modelbus.runtime.work_queue.cancellation import Cancellations
from modelbus.runtime.work_queue.errors import JobFailed
from modelbus.runtime.work_queue.reader import SlotConsumer
from modelbus.runtime.worker import WorkerRuntime
from modelbus.schemas.jobs import CommitPoint, JobKind, JobReply, JobRequest, Keepalive

__all__ = ("Job", "JobConsumer", "JobHandler", "drain")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
Req = TypeVar("Req", bound=JobRequest)


class Job(Generic[Req]):
    """One job being answered: its request, its replies (numbered), its commit, its span and log fields."""

    __slots__ = (
        "_seq", "committed", "error_code", "error_message", "handed_back", "kind", "last_sent", "log", "msg",
        "nc", "request", "result", "span", "status", "tg", "worker_id",
    )  # fmt: skip

    def __init__(
        self, nc: Client, kind: JobKind[Req, Any], msg: Msg, request: Req, *, worker_id: str, span: TaskSpan,
        tg: anyio.abc.TaskGroup,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.kind = kind
        self.msg = msg
        self.request = request
        self.worker_id = worker_id
        self.span = span
        self.tg = tg  # the consumer's task group, for work the job starts that must outlive a call
        self.log: dict[str, Any] = {}  # more fields for the job's log line
        self.result: Any = None  # what the handler keeps of its answer for ``done``
        self.committed = False
        self.handed_back = False
        self.status = 200
        self.error_code: str | None = None
        self.error_message: str | None = None
        self.last_sent = time.monotonic()
        self._seq = 0

    def stamp(self) -> dict[str, Any]:
        """The envelope of the job's next reply (``request_id``, ``worker_id`` and the next ``seq``)."""
        seq, self._seq = self._seq, self._seq + 1
        return {"request_id": self.request.request_id, "worker_id": self.worker_id, "seq": seq}

    def ended(self, status: int, code: str | None = None, message: str | None = None) -> None:
        """The status the job ends with (200 unless said otherwise): for the log line and the span."""
        self.status, self.error_code, self.error_message = status, code, message

    async def commit(self) -> None:
        if not self.committed:
            self.committed = True
            await self.msg.ack()

    async def publish(self, data: bytes) -> None:
        """Send one encoded reply (committing first when the kind commits at its first reply)."""
        if self.kind.commit is CommitPoint.FIRST_REPLY:
            await self.commit()
        self.last_sent = time.monotonic()
        await self.nc.publish(self.request.reply_to, data)

    async def send(self, reply: JobReply) -> None:
        await self.publish(_encoder.encode(reply))

    async def keepalive(self) -> None:
        self.last_sent = time.monotonic()
        beat = Keepalive(request_id=self.request.request_id, worker_id=self.worker_id, seq=-1)
        await self.nc.publish(self.request.reply_to, _encoder.encode(beat))

    async def fail(self, error: JobFailed) -> None:
        """Answer with the kind's error reply, and commit: the job is over."""
        self.ended(error.status, error.code or str(error.status), error.message)
        reply = self.kind.failure(
            **self.stamp(), status=error.status, message=error.message, code=error.code,
            error_type=error.type, param=error.param,
        )  # fmt: skip
        await self.commit()
        try:
            await self.nc.publish(self.request.reply_to, _encoder.encode(reply))
        except nats.errors.Error as exc:
            log.warning(f"{self.kind.name}.failure_not_sent", error=type(exc).__name__)


class JobHandler(Protocol[Req]):
    def describe(self, request: Req) -> Mapping[str, Any]:
        """The fields of the job's log line (its ``model`` is also the span's); never a prompt."""
        ...

    async def handle(self, job: Job[Req]) -> None:
        """Answer the job with its replies; raise JobFailed for an error the client should get."""
        ...

    def done(self, job: Job[Req], seconds: float) -> None:
        """The job ended after ``seconds`` (it was not skipped): counters for ``$SRV.STATS``."""
        ...


class JobConsumer(Generic[Req]):
    """Runs ``handler`` for the jobs of ``kind``'s queue ``queue``, at most ``capacity()`` at once."""

    def __init__(
        self,
        nc: Client,
        kind: JobKind[Req, Any],
        handler: JobHandler[Req],
        *,
        queue: str = "",
        worker_id: str,
        settings: QueueSettings,
        cancellations: Cancellations,
        recorder: TaskRecorder,
        capacity: Callable[[], int],
        ready: Callable[[], bool] = lambda: True,
        on_count: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self.nc = nc
        self.kind = kind
        self.handler = handler
        self.queue = queue
        self.worker_id = worker_id
        self.settings = settings
        self.cancellations = cancellations
        self.recorder = recorder
        self._decoder = msgspec.json.Decoder(kind.request)
        self._config = work_queue_consumer(kind, queue, settings)
        self._active: dict[str, Job[Req]] = {}
        self._event = f"{kind.name}.request"
        self.slots = SlotConsumer(
            nc, stream=kind.stream, consumer=str(self._config.durable_name), handle=self._process,
            capacity=capacity, ready=ready, on_count=on_count,
        )  # fmt: skip

    @property
    def in_flight(self) -> int:
        return self.slots.in_flight

    def wake(self) -> None:
        self.slots.wake()

    def stop_intake(self) -> None:
        self.slots.stop_intake()

    async def wait_idle(self) -> None:
        await self.slots.wait_idle()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        js = self.nc.jetstream()
        await ensure_work_queue(js, self.kind, self.settings)
        await ensure_consumer(js, self.kind.stream, self._config)
        await self.slots.run(background=[self.keep_alive], task_status=task_status)

    async def _process(self, msg: Msg, tg: anyio.abc.TaskGroup) -> None:
        try:
            request = self._decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning(f"{self.kind.name}.bad_request_message", error=str(exc), worker_id=self.worker_id)
            await msg.term()
            return
        started = time.monotonic()
        fields = self.handler.describe(request)
        bound = log.bind(
            request_id=request.request_id, **fields, traceparent=request.traceparent, worker_id=self.worker_id
        )
        if time.time() >= request.deadline or self.cancellations.was_cancelled(request.request_id):
            await msg.term()
            bound.info(self._event, outcome="skipped", reason="deadline passed or cancelled while queued")
            return
        span = TaskSpan(
            self.recorder, task=self.kind.task, traceparent=request.traceparent,
            model=str(fields.get("model", "")), request_id=request.request_id,
        )  # fmt: skip
        job = Job(self.nc, self.kind, msg, request, worker_id=self.worker_id, span=span, tg=tg)
        try:
            await self._run(job, bound)
        finally:
            with anyio.CancelScope(shield=True):
                await self._done(job, bound, started)

    async def _run(self, job: Job[Req], bound: Any) -> None:
        request_id = job.request.request_id
        with anyio.CancelScope() as client_scope:
            self.cancellations.track(request_id, client_scope)
            self._active[request_id] = job
            try:
                try:
                    with anyio.fail_after(max(0.0, job.request.deadline - time.time())):
                        await self.handler.handle(job)
                except TimeoutError:
                    raise JobFailed(504, "the request's deadline passed", code="timeout") from None
                await job.commit()  # the whole answer is sent (the commit point, at the latest)
            except JobFailed as error:
                with anyio.CancelScope(shield=True):
                    await job.fail(error)
            except nats.errors.Error as exc:
                bound.warning(f"{self.kind.name}.reply_not_sent", error=type(exc).__name__)
                with anyio.CancelScope(shield=True):
                    await self._abandon(job, "the reply could not be sent")
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    if client_scope.cancel_called:
                        await job.commit()  # the client left: the work is over
                    else:
                        await self._abandon(job, f"the {self.kind.worker} shut down while answering")
                raise
            except Exception:  # noqa: BLE001 - one failed job must not end the worker
                bound.exception(f"{self.kind.name}.internal_error")
                failure = JobFailed(500, f"the {self.kind.worker} failed on this request", code="internal")
                with anyio.CancelScope(shield=True):
                    await job.fail(failure)
            finally:
                self._active.pop(request_id, None)
                self.cancellations.forget(request_id)
                if client_scope.cancel_called:
                    job.ended(499, "client_closed", "the client cancelled the request")

    async def _abandon(self, job: Job[Req], why: str) -> None:
        """Stop before the end: hand the job back while uncommitted (another worker answers it), else tell
        the client why its answer stops."""
        if not job.committed:
            job.handed_back = True
            await job.msg.nak()
        else:
            await job.fail(JobFailed(503, why, code="worker_shutdown"))

    async def _done(self, job: Job[Req], bound: Any, started: float) -> None:
        """The job's counters, its log line, and its span (unless another worker will answer it)."""
        seconds = time.monotonic() - started
        self.handler.done(job, seconds)
        queued = _queued_ms(job.request, started)
        bound.info(
            self._event,
            outcome="handed_back" if job.handed_back else outcome_of(job.status, job.error_code),
            status=job.status,
            error_code=job.error_code,
            committed=job.committed,
            duration_ms=round(seconds * 1000, 2),
            queued_ms=queued,
            **job.log,
        )
        if job.handed_back:
            return
        if queued is not None:
            job.span.labels["queued_ms"] = str(queued)
        await job.span.finish(job.status, error_code=job.error_code, error_message=job.error_message)

    async def keep_alive(self) -> None:
        """Extend unanswered messages' ack deadlines, and tell each client its worker is alive."""
        interval = min(self.settings.keepalive, self.settings.ack_wait / 3)
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for job in list(self._active.values()):
                try:
                    if not job.committed:
                        await job.msg.in_progress()  # not answered yet: JetStream must not redeliver it
                        await job.keepalive()  # and the client knows a worker holds it
                    elif now - job.last_sent >= self.settings.keepalive:
                        await job.keepalive()  # answering: the client must not give up on us
                except nats.errors.Error as exc:
                    log.warning(f"{self.kind.name}.keepalive_failed", error=type(exc).__name__)

    async def announce_held(self) -> None:
        """Tell each client now that this worker holds its requests: sent before the goodbye, so that a
        request this draining worker will still finish is not given up when its model leaves the view."""
        for job in list(self._active.values()):
            try:
                await job.keepalive()
            except nats.errors.Error as exc:
                log.warning(f"{self.kind.name}.keepalive_failed", error=type(exc).__name__)


async def drain(consumers: Iterable[JobConsumer[Any]], runtime: WorkerRuntime, *, grace: float) -> int:
    """A worker's shutdown: take no new jobs, tell each client what is still held (so it is not given up when
    the model leaves the view), say goodbye, and let running jobs finish within ``grace``. How many were
    still running when the grace ran out (they are then handed back or told the worker stopped)."""
    consumers = list(consumers)
    for consumer in consumers:
        consumer.stop_intake()
        await consumer.announce_held()
    await runtime.goodbye()
    with anyio.move_on_after(grace, shield=True):
        for consumer in consumers:
            await consumer.wait_idle()
    return sum(consumer.in_flight for consumer in consumers)


def _queued_ms(request: JobRequest, started: float) -> float | None:
    """How long the job waited between its client and this worker (clocks across machines must agree)."""
    if not request.submitted_at:
        return None
    began = time.time() - (time.monotonic() - started)
    return round(max(0.0, began - request.submitted_at) * 1000, 2)
