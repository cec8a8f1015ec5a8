"""``ask_model`` over the bus: the NSQL worker asks a model for SQL on the same chat path clients use.

Each call is one plain (non-streaming) chat request on the model's work queue, with the output constrained
to ``{"sql": "..."}`` (:data:`~modelbus.workers.nsql.prompt.RESPONSE_FORMAT`) and temperature 0 (higher for a
retry and the sampled candidates of a vote), at most ``runtime.nsql.max_sql_tokens`` tokens, bounded by what
is left of the NSQL request's deadline. Anything but an answer raises :class:`ModelCallError`, which carries
the status and code the NSQL client gets:

- the model worker's own failure keeps its status (503 not ready, 429 rate limited, 400 rejected, 502 the
  upstream failed, 504 ...), except 401 and 403: those say the *model worker's* upstream credentials were
  refused, not the NSQL client's, so they become 502;
- the messages do not fit in the model's context (400 ``context_length_exceeded``, from any provider):
  :class:`ModelContextExceeded`, which is also :class:`~modelbus.workers.nsql.generate.ContextExceeded`, so
  the question is not asked again with more text appended;
- the bus's own failures keep the status and code of :mod:`modelbus.runtime.work_queue.errors` (429
  ``queue_full``, 503 ``bus_unavailable``, 504 ``timeout``, 502 ``worker_lost`` / ``reply_incomplete``);
- a reply that is not a chat completion: 502 (``bad_model_reply``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import msgspec

from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.runtime.work_queue.errors import BusFailure
from modelbus.schemas.chat import CHAT, CONTEXT_LENGTH_EXCEEDED, ChatFailure, ChatRequest, ChatResult
from modelbus.schemas.openai import ChatCompletion
from modelbus.workers.nsql.context import Message
from modelbus.workers.nsql.generate import ContextExceeded
from modelbus.workers.nsql.prompt import RESPONSE_FORMAT

__all__ = ("BusModel", "ModelCallError", "ModelContextExceeded", "nsql_status")

_encoder = msgspec.json.Encoder()


class ModelCallError(Exception):
    """Asking the model failed; ``status`` and ``code`` are what the NSQL reply carries."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ModelContextExceeded(ModelCallError, ContextExceeded):
    """The model worker said the messages do not fit in the model's context; ``message`` is its own."""


_completion_decoder = msgspec.json.Decoder(ChatCompletion)


def nsql_status(chat_status: int) -> int:
    """The NSQL status for a model worker's failure status (see the module docstring)."""
    return 502 if chat_status in (401, 403) else chat_status


def request_body(
    model: str, messages: list[Message], temperature: float = 0.0, max_tokens: int | None = None
) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "response_format": RESPONSE_FORMAT,
        "temperature": temperature,
    }
    if max_tokens is not None:  # a sampled model can run on inside the JSON string until the context ends
        body["max_tokens"] = max_tokens
    return _encoder.encode(body)


class BusModel:
    """The ``ask_model`` of one NSQL request: every call is a chat request to ``model`` over the bus."""

    def __init__(
        self,
        client: WorkQueueClient,
        *,
        model: str,
        deadline: float,
        traceparent: str | None,
        max_tokens: int | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.deadline = deadline
        self.traceparent = traceparent
        self.max_tokens = max_tokens
        self.calls = 0

    async def __call__(self, messages: list[Message], *, temperature: float = 0.0) -> str:
        self.calls += 1
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise ModelCallError(504, "the deadline passed before the model was asked", "timeout")
        model = self.model
        request = ChatRequest(
            request_id=uuid.uuid4().hex,  # one per attempt: the chat stream de-duplicates by id
            model=model,
            body=msgspec.Raw(request_body(model, messages, temperature, self.max_tokens)),
            traceparent=self.traceparent,
        )
        answered = False
        try:
            pending = await self.client.submit(CHAT, request, queue=model, timeout=remaining)
            try:
                reply = await pending.next()
                answered = True
            finally:
                with anyio.CancelScope(shield=True):
                    await pending.close(cancel=not answered)  # cancelled or given up: the model can stop
        except BusFailure as exc:
            raise ModelCallError(exc.status, f"asking model `{model}`: {exc.message}", exc.code) from exc
        if isinstance(reply, ChatFailure) and reply.code == CONTEXT_LENGTH_EXCEEDED:
            raise ModelContextExceeded(nsql_status(reply.status), reply.message, CONTEXT_LENGTH_EXCEEDED)
        if isinstance(reply, ChatFailure):
            raise ModelCallError(
                nsql_status(reply.status),
                f"model `{model}` failed: {reply.message}",
                reply.code or "model_error",
            )
        if not isinstance(reply, ChatResult):
            raise ModelCallError(
                502, f"model `{model}` sent a {type(reply).__name__}, not a result", "bad_model_reply"
            )
        try:
            completion = _completion_decoder.decode(reply.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ModelCallError(
                502, f"model `{model}` sent a reply that is not a chat completion: {exc}", "bad_model_reply"
            ) from exc
        return completion.text  # "" (no SQL in it): the guard refuses it and the model is asked again
