"""Pull NSQL requests from the ``modelbus.v1.nsql`` work queue, only into free slots, and reply to each.

Every NSQL worker shares one durable consumer, so the requests spread over the workers that have room.
A request's message stays unacknowledged until its :class:`~modelbus.schemas.nsql.NsqlReply` is sent (in parts
when it is larger than one message); while it is being answered the worker tells JetStream it is alive
(``in_progress``), so a worker that dies has its requests delivered again to another one after
``ack_wait``. A malformed message, and one whose deadline passed while it was queued, is terminated without
a reply (nobody waits for it any more). A request the ingress cancels (``modelbus.v1.cancel.<request_id>``)
stops, and so does the model call it was waiting on. On shutdown the consumer stops taking requests; what
is still running when the grace is over is handed back (``nak``) to another worker.

Each request gets one log line, ``nsql.request``, with its outcome, status, attempts, time and the time
spent outside the model; never the question itself (its length only).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from modelbus.config import NsqlSettings
from modelbus.runtime.jetstream import ensure_consumer, ensure_nsql_stream, nsql_consumer_config
from modelbus.runtime.work_queue.cancellation import Cancellations
from modelbus.runtime.work_queue.reader import SlotConsumer
from modelbus.schemas.nsql import NsqlReply, NsqlRequest
from modelbus.schemas.subjects import NSQL_STREAM
from modelbus.workers.nsql.handler import Handled
from modelbus.workers.nsql.reply_parts import reply_messages
from modelbus.workers.nsql.stats import NsqlStats

__all__ = ("NsqlConsumer",)

log = structlog.get_logger(__name__)
_request_decoder = msgspec.json.Decoder(NsqlRequest)

Handle = Callable[[NsqlRequest], Awaitable[Handled]]


class NsqlConsumer:
    def __init__(
        self,
        nc: Client,
        handle: Handle,
        *,
        worker_id: str,
        settings: NsqlSettings,
        ack_wait: float,
        cancellations: Cancellations,
    ) -> None:
        self.nc = nc
        self.handle = handle
        self.worker_id = worker_id
        self.settings = settings
        self.capacity = settings.capacity
        self.ack_wait = ack_wait
        self.cancellations = cancellations
        self.stats = NsqlStats()  # for $SRV.STATS
        self._active: dict[str, Msg] = {}
        self._config = nsql_consumer_config(ack_wait, settings.max_deliver)
        self.slots = SlotConsumer(
            nc, stream=NSQL_STREAM, consumer=str(self._config.durable_name), capacity=lambda: self.capacity,
            handle=lambda msg, _tg: self._process(msg),
        )  # fmt: skip

    @property
    def in_flight(self) -> int:
        return self.slots.in_flight

    def stop_intake(self) -> None:
        self.slots.stop_intake()

    async def wait_idle(self) -> None:
        await self.slots.wait_idle()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        js: JetStreamContext = self.nc.jetstream()
        await ensure_nsql_stream(js, self.settings)
        await ensure_consumer(js, NSQL_STREAM, self._config)
        await self.slots.run(background=[self.keep_alive], task_status=task_status)

    async def _process(self, msg: Msg) -> None:
        try:
            request = _request_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("nsql.bad_request_message", error=str(exc), worker_id=self.worker_id)
            await msg.term()
            return
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(request_id=request.request_id):
            bound = log.bind(
                model=request.model,
                datasets=list(request.datasets),
                format=request.format.value,
                sample_data_enabled=request.sample_data_enabled,
                query_chars=len(request.query),
                traceparent=request.traceparent,
                worker_id=self.worker_id,
            )
            if time.time() >= request.deadline or self.cancellations.was_cancelled(request.request_id):
                await msg.term()
                bound.info(
                    "nsql.request", outcome="skipped", reason="deadline passed or cancelled while queued"
                )
                return
            handled: Handled | None = None
            outcome = "ok"
            with anyio.CancelScope() as client_scope:
                self.cancellations.track(request.request_id, client_scope)
                self._active[request.request_id] = msg
                try:
                    handled = await self.handle(request)
                    outcome = "ok" if handled.reply.status == 200 else "error"
                    await self._reply(request, msg, handled.reply)
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True):
                        if client_scope.cancel_called:
                            await msg.ack()  # the ingress gave up on it: the work is over
                        else:
                            await msg.nak()  # shutting down before the answer: another worker takes it
                            outcome = "handed_back"
                    raise
                except Exception:  # noqa: BLE001 - one failed request must not end the worker
                    bound.exception("nsql.internal_error")
                    outcome = "error"
                    handled = Handled(reply=self._internal_error(request))
                    with anyio.CancelScope(shield=True):
                        await self._reply(request, msg, handled.reply)
                finally:
                    self._active.pop(request.request_id, None)
                    self.cancellations.forget(request.request_id)
                    final = "cancelled" if client_scope.cancel_called else outcome
                    self.stats.record(final, handled, time.monotonic() - started)
                    reply = handled.reply if handled is not None else None
                    bound.info(
                        "nsql.request",
                        outcome=final,
                        status=reply.status if reply else None,
                        error_code=reply.error_code if reply else None,
                        attempts=reply.attempts if reply else None,
                        model_calls=handled.model_calls if handled else None,
                        duration_ms=round((time.monotonic() - started) * 1000, 2),
                        outside_model_ms=handled.outside_model_ms if handled else None,
                    )

    def _internal_error(self, request: NsqlRequest) -> NsqlReply:
        return NsqlReply(
            request_id=request.request_id,
            worker_id=self.worker_id,
            status=500,
            error_message="the NSQL worker failed on this request",
            error_code="internal",
        )

    async def _reply(self, request: NsqlRequest, msg: Msg, reply: NsqlReply) -> None:
        """Send the reply (in parts when it exceeds ``max_payload``:
        :mod:`modelbus.workers.nsql.reply_parts`), then acknowledge the request; a reply that cannot be sent
        whole hands the request back."""
        try:
            for message in reply_messages(reply, self.nc.max_payload):
                await self.nc.publish(request.reply_to, message)
        except nats.errors.Error as exc:
            log.warning("nsql.reply_not_sent", error=type(exc).__name__)
            await msg.nak()
            return
        await msg.ack()

    async def keep_alive(self) -> None:
        """Extend the ack deadline of every request being answered, so JetStream does not redeliver it."""
        interval = self.ack_wait / 3
        while True:
            await anyio.sleep(interval)
            for msg in list(self._active.values()):
                try:
                    await msg.in_progress()
                except nats.errors.Error as exc:
                    log.warning("nsql.keepalive_failed", error=type(exc).__name__)
