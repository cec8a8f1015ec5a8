"""Embeddings (``POST /v1/embeddings``): OpenAI's request as modelbus accepts it, and the job on the bus.

The ingress validates the request (``input`` a string, a list of strings, a token array or a list of token
arrays; ``encoding_format`` ``float`` or ``base64``; ``dimensions``; ``user``), bounds it, and queues an
:class:`EmbedRequest` on the embedding model's work queue (:data:`EMBED`, one queue per model). The worker
that takes it batches it with other requests into one engine call, and answers one :class:`EmbedResult`
holding OpenAI's ``list`` of ``embedding`` objects, or an :class:`EmbedFailure`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from modelbus.schemas.jobs import CommitPoint, JobKind, JobReply, JobRequest
from modelbus.schemas.subjects import EMBED_STREAM, PREFIX, embed_subject, encode_token

__all__ = ("EMBED", "EmbedFailure", "EmbedReply", "EmbedRequest", "EmbedResult", "EmbeddingsRequest")

Tokens = list[Annotated[int, msgspec.Meta(ge=0)]]


class EmbeddingsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/embeddings``."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    # a string, a list of strings, a token array, or a list of token arrays (checked by the ingress)
    input: str | list[str | Annotated[int, msgspec.Meta(ge=0)] | Tokens]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: str | None = None


class EmbedRequest(JobRequest, frozen=True, kw_only=True, tag="modelbus.v1.embed_request"):
    model: str
    inputs: list[str | Tokens]  # never empty: strings or token arrays
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbedResult(JobReply, frozen=True, tag="modelbus.v1.embed_result"):
    data: msgspec.Raw  # OpenAI's ``{"object": "list", "data": [...], "model", "usage"}``
    prompt_tokens: int = 0  # the usage's, so the ingress need not decode the vectors to count them


class EmbedFailure(JobReply, frozen=True, tag="modelbus.v1.embed_error"):
    status: int
    message: str
    error_type: str = "server_error"
    code: str | None = None
    param: str | None = None


EmbedReply = EmbedResult | EmbedFailure

EMBED: JobKind[EmbedRequest, EmbedReply] = JobKind(
    name="embed",
    stream=EMBED_STREAM,
    wildcard=f"{PREFIX}.embed.*",
    subject=embed_subject,
    durable=lambda model: f"embed-{encode_token(model)}",
    request=EmbedRequest,
    replies=EmbedReply,
    commit=CommitPoint.RESULT,
    failure=EmbedFailure,
    worker="embedding worker",
    label=lambda model: f"model `{model}`",
    task="text_embed",
)
