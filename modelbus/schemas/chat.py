"""Chat completions on the bus: the request a worker pulls, and the replies it sends to the ingress inbox.

The ingress validates the client's OpenAI request (:mod:`modelbus.schemas.openai`) and forwards its JSON
untouched in :class:`ChatRequest`, on the work queue of its model. The worker answers with :data:`ChatReply`
messages (numbered as every job's are: :mod:`modelbus.schemas.jobs`). A streaming answer is ``ChatChunk``...
then ``ChatEnd``; a plain one is a single ``ChatResult``; any failure is a ``ChatFailure`` (which ends the
reply). The first reply commits the request (:attr:`~modelbus.schemas.jobs.CommitPoint.FIRST_REPLY`).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from modelbus.schemas.jobs import CommitPoint, JobKind, JobReply, JobRequest
from modelbus.schemas.subjects import CHAT_STREAM, PREFIX, chat_subject, encode_token

__all__ = (
    "CHAT",
    "CONTEXT_LENGTH_EXCEEDED",
    "ChatChunk",
    "ChatEnd",
    "ChatFailure",
    "ChatReply",
    "ChatRequest",
    "ChatResult",
)


class ChatRequest(JobRequest, frozen=True, kw_only=True, tag="modelbus.v1.chat_request"):
    model: str
    body: msgspec.Raw  # the client's OpenAI chat completion request, as JSON
    stream: bool = False
    include_usage: bool = False
    # ``responses``: the body is a :class:`~modelbus.schemas.responses.ResponsesCall`, answered with the
    # response object (``ChatResult``) or its stream events (one per ``ChatChunk`` item)
    api: Literal["chat", "responses"] = "chat"
    # Spice's ``x-spiceai-completion-progress: enabled``: a tools model's stream tells what its tools do
    progress: bool = False


class ChatChunk(JobReply, frozen=True, tag="modelbus.v1.chat_chunk"):
    """OpenAI ``chat.completion.chunk`` objects, in order: those produced together travel together."""

    data: list[msgspec.Raw]


class ChatEnd(JobReply, frozen=True, tag="modelbus.v1.chat_end"):
    pass


class ChatResult(JobReply, frozen=True, tag="modelbus.v1.chat_result"):
    data: msgspec.Raw  # the OpenAI ``chat.completion`` object


class ChatFailure(JobReply, frozen=True, tag="modelbus.v1.chat_error"):
    """An OpenAI-shaped error with the HTTP status the ingress should answer with."""

    status: int
    message: str
    error_type: str = "server_error"
    code: str | None = None
    param: str | None = None


ChatReply = ChatChunk | ChatEnd | ChatResult | ChatFailure

CHAT: JobKind[ChatRequest, ChatReply] = JobKind(
    name="chat",
    stream=CHAT_STREAM,
    wildcard=f"{PREFIX}.chat.*",
    subject=chat_subject,
    durable=lambda model: f"chat-{encode_token(model)}",
    request=ChatRequest,
    replies=ChatReply,
    commit=CommitPoint.FIRST_REPLY,
    failure=ChatFailure,
    worker="model worker",
    label=lambda model: f"model `{model}`",
    task="ai_completion",
)

# ``ChatFailure.code`` (OpenAI's code, status 400) when the messages do not fit in the model's context,
# whichever provider said so. Asking again with more text cannot help: NSQL workers stop at it.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
