"""Pull chat requests for one model from its work queue, only into free slots, and answer on the bus.

The JetStream message stays unacknowledged until the answer is committed to: the result of a plain
request, or the first chunk of a stream. A worker that dies before that point has its request delivered
again to another worker (after ``ack_wait``; a live worker keeps extending it), so the client sees no
error. After the first chunk the client has seen output, so a failure becomes an error event instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from modelbus.config import ChatSettings, ModelConfig
from modelbus.runtime.jetstream import chat_consumer_config, ensure_chat_stream, ensure_consumer
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.summaries import Usage, chat_input, completion_output, stream_piece
from modelbus.runtime.tasks.tracing import start_span
from modelbus.runtime.work_queue.cancellation import Cancellations
from modelbus.runtime.work_queue.reader import SlotConsumer
from modelbus.runtime.worker import ModelState
from modelbus.schemas.chat import ChatChunk, ChatEnd, ChatFailure, ChatKeepalive, ChatRequest, ChatResult
from modelbus.schemas.history import TaskOutcome
from modelbus.schemas.status import ErrorInfo, ModelStatus
from modelbus.schemas.subjects import CHAT_STREAM
from modelbus.workers.model.providers.base import ChatCall, Provider, ProviderError

__all__ = ("ChatConsumer", "prepare_body")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(ChatRequest)
_body_decoder = msgspec.json.Decoder(dict[str, Any])


def prepare_body(model: ModelConfig, body: dict[str, Any]) -> dict[str, Any]:
    """Apply the model's configured defaults and system prompt; what the request says wins."""
    params = model.params
    merged = {**params.defaults, **body} if params.defaults else dict(body)
    if params.system_prompt:
        merged["messages"] = [{"role": "system", "content": params.system_prompt}, *merged["messages"]]
    return merged


class _Reply:
    """Numbered replies to one request's ingress inbox."""

    def __init__(self, nc: Client, request: ChatRequest, worker_id: str, tg: anyio.abc.TaskGroup) -> None:
        self.nc = nc
        self.request = request
        self.worker_id = worker_id
        self.seq = 0
        self.last_sent = time.monotonic()
        self._tg = tg
        self._pending: list[msgspec.Raw] = []
        self._flush_scheduled = False

    def _next(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        self.last_sent = time.monotonic()
        return seq

    async def send(self, message: ChatChunk | ChatEnd | ChatResult | ChatFailure) -> None:
        await self.nc.publish(self.request.reply_to, _encoder.encode(message))

    def chunk(self, data: bytes) -> None:
        """Queue a chunk; the chunks a provider yields without waiting go out together in one message."""
        self._pending.append(msgspec.Raw(data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._tg.start_soon(self.flush)

    async def flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        items, self._pending = self._pending, []
        r = self.request
        await self.send(
            ChatChunk(request_id=r.request_id, worker_id=self.worker_id, seq=self._next(), data=items)
        )

    async def end(self) -> None:
        await self.flush()
        await self.send(
            ChatEnd(request_id=self.request.request_id, worker_id=self.worker_id, seq=self._next())
        )

    async def result(self, data: bytes) -> None:
        r = self.request
        await self.send(
            ChatResult(
                request_id=r.request_id, worker_id=self.worker_id, seq=self._next(), data=msgspec.Raw(data)
            )
        )

    async def failure(self, error: ProviderError) -> None:
        await self.flush()
        await self.send(
            ChatFailure(
                request_id=self.request.request_id,
                worker_id=self.worker_id,
                seq=self._next(),
                status=error.status,
                message=error.message,
                error_type=error.type,
                code=error.code,
                param=error.param,
            )
        )

    async def keepalive(self) -> None:
        self.last_sent = time.monotonic()
        keepalive = ChatKeepalive(request_id=self.request.request_id, worker_id=self.worker_id, seq=-1)
        await self.nc.publish(self.request.reply_to, _encoder.encode(keepalive))


class ChatConsumer:
    def __init__(
        self,
        nc: Client,
        provider: Provider,
        model: ModelConfig,
        *,
        worker_id: str,
        settings: ChatSettings,
        cancellations: Cancellations,
        recorder: TaskRecorder,
        on_unhealthy: Callable[[ErrorInfo, str], None] = lambda _error, _message: None,
    ) -> None:
        self.nc = nc
        self.provider = provider
        self.state: ModelState = provider.state
        self.model = model
        self.worker_id = worker_id
        self.settings = settings
        self.cancellations = cancellations
        self.recorder = recorder
        self.on_unhealthy = on_unhealthy
        self._active: dict[str, _Active] = {}
        config = chat_consumer_config(model.name, settings)
        self._config = config
        self.slots = SlotConsumer(
            nc, stream=CHAT_STREAM, consumer=str(config.durable_name), handle=self._process,
            capacity=lambda: self.state.capacity, ready=lambda: self.state.status is ModelStatus.READY,
            on_count=self._count,
        )  # fmt: skip

    def _count(self, in_flight: int) -> None:
        self.state.in_flight = in_flight

    def stop_intake(self) -> None:
        self.slots.stop_intake()

    async def wait_idle(self) -> None:
        await self.slots.wait_idle()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        js: JetStreamContext = self.nc.jetstream()
        await ensure_chat_stream(js, self.settings)
        await ensure_consumer(js, CHAT_STREAM, self._config)
        await self.slots.run(background=[self.keep_alive], task_status=task_status)

    async def _process(self, msg: Msg, tg: anyio.abc.TaskGroup) -> None:
        try:
            request = _request_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("chat.bad_request_message", error=str(exc))
            await msg.term()
            return
        started = time.monotonic()
        bound = log.bind(
            request_id=request.request_id,
            model=request.model,
            traceparent=request.traceparent,
            stream=request.stream,
            worker_id=self.worker_id,
        )
        if time.time() >= request.deadline or self.cancellations.was_cancelled(request.request_id):
            await msg.term()
            bound.info(
                "chat.request", outcome="skipped", reason="deadline passed or client left while queued"
            )
            return
        active = _Active(msg, _Reply(self.nc, request, self.worker_id, tg), _Observed(self.recorder))
        self.state.requests += 1
        with anyio.CancelScope() as client_scope:
            self.cancellations.track(request.request_id, client_scope)
            self._active[request.request_id] = active
            try:
                await self._answer(request, active)
            except ProviderError as error:
                active.observed.failed(error.code or str(error.status), error.message)
                self.state.failures += 1
                if error.unhealthy is not None:
                    self.on_unhealthy(error.unhealthy, error.message)
                with anyio.CancelScope(shield=True):
                    await active.fail(error)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    if client_scope.cancel_called:
                        await active.commit()  # the client left: the work is over
                    elif not active.committed:
                        await msg.nak()  # shutting down before any answer: another worker takes it
                        active.observed.outcome = "handed_back"
                    else:
                        await active.fail(SHUTDOWN)
                        active.observed.outcome = "interrupted"
                raise
            except Exception:  # noqa: BLE001 - one failed request must not end the worker
                bound.exception("chat.internal_error")
                active.observed.failed("internal", "the model worker failed on this request")
                self.state.failures += 1
                with anyio.CancelScope(shield=True):
                    await active.fail(ProviderError(500, "the model worker failed on this request"))
            finally:
                self._active.pop(request.request_id, None)
                self.cancellations.forget(request.request_id)
                if client_scope.cancel_called:
                    active.observed.outcome = "cancelled"
                with anyio.CancelScope(shield=True):
                    await self._done(request, active, bound, started)

    def _count_answered(self, active: _Active, started: float) -> None:
        """The model's busy time and tokens, for ``$SRV.STATS``."""
        usage = active.observed.usage
        self.state.count_answered(
            time.monotonic() - started,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
        )

    async def _done(self, request: ChatRequest, active: _Active, bound: Any, started: float) -> None:
        """The request's log line, and its span in the task history (unless another worker will answer)."""
        self._count_answered(active, started)  # $SRV.STATS
        observed = active.observed
        bound.info(
            "chat.request",
            outcome=observed.outcome,
            error_code=observed.error_code,
            committed=active.committed,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            queued_ms=_queued_ms(request, started),
        )
        if observed.outcome == "handed_back":
            return
        usage = observed.usage
        await self.recorder.record(
            start_span(request.traceparent),
            task="ai_completion",
            started_at=time.time() - (time.monotonic() - started),
            outcome=TaskOutcome.TIMEOUT if observed.error_code == "timeout" else observed.outcome,
            model=request.model,
            request_id=request.request_id,
            error_code=observed.error_code,
            error_message=observed.error_message,
            input=observed.input,
            output=observed.output(),
            tokens_in=usage.prompt_tokens if usage else None,
            tokens_out=usage.completion_tokens if usage else None,
            labels=_labels(request, started),
        )

    async def _answer(self, request: ChatRequest, active: _Active) -> None:
        try:
            body = prepare_body(self.model, _body_decoder.decode(request.body))
        except msgspec.DecodeError as exc:
            raise ProviderError(400, f"malformed request body: {exc}", type_="invalid_request_error") from exc
        if active.observed.keeps_text:
            active.observed.input = chat_input(body.get("messages") or [])
        call = ChatCall(
            request_id=request.request_id,
            body=body,
            include_usage=request.include_usage,
            deadline=request.deadline,
        )
        try:
            with anyio.fail_after(max(0.0, request.deadline - time.time())):
                if request.stream:
                    await self.provider.stream(call, active.chunk)
                    await active.commit()
                    await active.reply.end()
                else:
                    data = await self.provider.complete(call)
                    active.observed.completion(data)
                    await active.commit()
                    await active.reply.result(data)
        except TimeoutError:
            raise ProviderError(504, "the request's deadline passed", code="timeout") from None

    async def keep_alive(self) -> None:
        """Extend unanswered messages' ack deadlines, and tell each ingress its worker is alive."""
        interval = min(self.settings.keepalive, self.settings.ack_wait / 3)
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for active in list(self._active.values()):
                if not active.committed:
                    await active.msg.in_progress()  # not answered yet: JetStream must not redeliver it
                    await active.reply.keepalive()  # and the ingress knows a worker holds it
                elif now - active.reply.last_sent >= self.settings.keepalive:
                    await active.reply.keepalive()  # answering: the ingress must not give up on us

    async def announce_held(self) -> None:
        """Tell each ingress now that this worker holds its requests: sent before the goodbye, so that a
        request this draining worker will still finish is not given up when the model leaves the view."""
        for active in list(self._active.values()):
            await active.reply.keepalive()


def _labels(request: ChatRequest, started: float) -> dict[str, str]:
    labels = {"stream": "true"} if request.stream else {}
    queued = _queued_ms(request, started)
    if queued is not None:
        labels["queued_ms"] = str(queued)
    return labels


def _queued_ms(request: ChatRequest, started: float) -> float | None:
    """How long the request waited between the ingress and this worker (clocks across machines must agree)."""
    if not request.submitted_at:
        return None
    began = time.time() - (time.monotonic() - started)
    return round(max(0.0, began - request.submitted_at) * 1000, 2)


SHUTDOWN = ProviderError(503, "the model worker shut down while answering", code="worker_shutdown")


class _Observed:
    """What the log line and the task history keep of one answer: its outcome, the question, the text (as
    far as kept) and the usage."""

    def __init__(self, recorder: TaskRecorder) -> None:
        self.keeps_text = recorder.keeps_text
        self._limit = recorder.settings.max_chars + 1 if self.keeps_text else 0
        self.input: str | None = None
        self.usage: Usage | None = None
        self.outcome = "ok"
        self.error_code: str | None = None
        self.error_message: str | None = None
        self._parts: list[str] = []
        self._chars = 0

    def failed(self, code: str, message: str) -> None:
        self.outcome, self.error_code, self.error_message = "error", code, message

    def _add(self, text: str, usage: Usage | None) -> None:
        if text and self._chars < self._limit:
            self._parts.append(text)
            self._chars += len(text)
        if usage is not None:
            self.usage = usage

    def completion(self, data: bytes) -> None:
        self._add(*completion_output(data))

    def chunk(self, data: bytes) -> None:
        if self._chars < self._limit or b'"usage"' in data:
            self._add(*stream_piece(data))

    def output(self) -> str | None:
        return "".join(self._parts) if self._parts else None


class _Active:
    """A request being answered: its message (acknowledged once the answer is committed) and its replies."""

    def __init__(self, msg: Msg, reply: _Reply, observed: _Observed) -> None:
        self.msg = msg
        self.reply = reply
        self.observed = observed
        self.committed = False

    async def commit(self) -> None:
        if not self.committed:
            self.committed = True
            await self.msg.ack()

    async def chunk(self, data: bytes) -> None:
        await self.commit()
        self.observed.chunk(data)
        self.reply.chunk(data)

    async def fail(self, error: ProviderError) -> None:
        await self.commit()
        await self.reply.failure(error)
