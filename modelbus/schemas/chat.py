"""Chat completions on the bus: the request a worker pulls, and the replies it sends to the ingress inbox.

The ingress validates the client's OpenAI request (:mod:`modelbus.schemas.openai`) and forwards its JSON
untouched in :class:`ChatRequest`. The worker answers on ``reply_to`` with messages of :data:`ChatReply`,
numbered by ``seq`` from 0 so that the ingress notices a gap instead of passing it on. A streaming answer is
``ChatChunk``... then ``ChatEnd``; a plain one is a single ``ChatResult``; any failure is a ``ChatFailure``
(which ends the reply). ``ChatKeepalive`` tells the ingress the worker is still alive during long pauses.
"""

from __future__ import annotations

import msgspec

__all__ = (
    "CONTEXT_LENGTH_EXCEEDED",
    "ChatChunk",
    "ChatEnd",
    "ChatFailure",
    "ChatKeepalive",
    "ChatReply",
    "ChatRequest",
    "ChatResult",
)


class ChatRequest(
    msgspec.Struct, frozen=True, kw_only=True, tag="modelbus.v1.chat_request", tag_field="type"
):
    request_id: str
    model: str
    body: msgspec.Raw  # the client's OpenAI chat completion request, as JSON
    stream: bool = False
    include_usage: bool = False
    reply_to: str
    deadline: float  # unix seconds; a worker never starts a request past it
    traceparent: str | None = None
    submitted_at: float = 0.0  # unix seconds when it was queued (0: unknown); a worker logs the wait


class _Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    request_id: str
    worker_id: str
    seq: int


class ChatChunk(_Reply, frozen=True, tag="modelbus.v1.chat_chunk"):
    """OpenAI ``chat.completion.chunk`` objects, in order: those produced together travel together."""

    data: list[msgspec.Raw]


class ChatEnd(_Reply, frozen=True, tag="modelbus.v1.chat_end"):
    pass


class ChatResult(_Reply, frozen=True, tag="modelbus.v1.chat_result"):
    data: msgspec.Raw  # the OpenAI ``chat.completion`` object


class ChatKeepalive(_Reply, frozen=True, tag="modelbus.v1.chat_keepalive"):
    pass


class ChatFailure(_Reply, frozen=True, tag="modelbus.v1.chat_error"):
    """An OpenAI-shaped error with the HTTP status the ingress should answer with."""

    status: int
    message: str
    error_type: str = "server_error"
    code: str | None = None
    param: str | None = None


ChatReply = ChatChunk | ChatEnd | ChatResult | ChatKeepalive | ChatFailure

# ``ChatFailure.code`` (OpenAI's code, status 400) when the messages do not fit in the model's context,
# whichever provider said so. Asking again with more text cannot help: NSQL workers stop at it.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
