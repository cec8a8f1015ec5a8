"""NSQL on the bus: the request an NSQL worker pulls from ``modelbus.v1.nsql``, and its one reply.

The response format travels with the request (the ingress negotiates it from ``Accept``), so the worker
renders the body and the ingress passes it through. :func:`negotiate` is Spice's rule:
``application/sql`` anywhere in the header means "the SQL only, not executed"; otherwise the first
recognised media type in header order wins; q-values and other parameters are ignored; a missing, empty,
wildcard or unknown header gives JSON. ``application/vnd.spiceai.sql.v1+json``, Spice's other name for the
vnd envelope, selects it too.

A reply whose message would exceed the server's ``max_payload`` travels as several messages on the reply
subject: :class:`NsqlReplyPart` ``seq`` 0, 1, ... carrying the body's bytes in order, then the
:class:`NsqlReply` itself with an empty ``body``, its ``seq`` the number of parts. Several core messages
were chosen over the JetStream object store because they need nothing to create, clean up or lose: the parts
are gone with the request (a deleted or half-written object cannot outlive it), the worker acknowledges the
request only after the last one is sent (:attr:`~modelbus.schemas.jobs.CommitPoint.RESULT`), and the
receiver proves completeness itself (``seq`` in order, as for every job), so a lost or reordered part is
detected, never delivered as a shorter body. The reply comes last so that a receiver that only knows
single-message replies fails to decode the first part instead of answering with an empty body.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from modelbus.schemas.jobs import CommitPoint, JobKind, JobReply, JobRequest
from modelbus.schemas.subjects import NSQL_STREAM, NSQL_SUBJECT

__all__ = (
    "NSQL",
    "NsqlDatasetStatus",
    "NsqlQuery",
    "NsqlReady",
    "NsqlReply",
    "NsqlReplyMessage",
    "NsqlReplyPart",
    "NsqlRequest",
    "ResponseFormat",
    "negotiate",
)


class ResponseFormat(enum.StrEnum):
    JSON = "application/json"
    VND = "application/vnd.spiceai.nsql.v1+json"
    SQL = "application/sql"
    CSV = "text/csv"
    TEXT = "text/plain"

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` of a response in this format."""
        if self in (ResponseFormat.JSON, ResponseFormat.VND):
            return self.value
        return f"{self.value}; charset=utf-8"

    @property
    def executes(self) -> bool:
        """Whether the statement runs (every format but SQL only)."""
        return self is not ResponseFormat.SQL


# Spice's other name for the vnd envelope; answered with the envelope's own content type
VND_ALIAS = "application/vnd.spiceai.sql.v1+json"
_BY_MEDIA_TYPE = {**{f.value: f for f in ResponseFormat}, VND_ALIAS: ResponseFormat.VND}


def negotiate(accept: str | None) -> ResponseFormat:
    """The response format for an ``Accept`` header (see the module docstring for the rule)."""
    if not accept:
        return ResponseFormat.JSON
    media_types = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    if ResponseFormat.SQL.value in media_types:
        return ResponseFormat.SQL
    for media_type in media_types:
        found = _BY_MEDIA_TYPE.get(media_type)
        if found is not None:
            return found
    return ResponseFormat.JSON


class NsqlRequest(JobRequest, frozen=True, kw_only=True, tag="modelbus.v1.nsql_request"):
    query: str
    model: str  # resolved by the ingress (the request's, or the default)
    datasets: tuple[str, ...]  # resolved by the ingress (the request's, or the model's)
    sample_data_enabled: bool = False
    format: ResponseFormat = ResponseFormat.JSON


class NsqlReply(JobReply, frozen=True, kw_only=True, tag="modelbus.v1.nsql_reply"):
    """The whole answer: a rendered body on success, or an OpenAI-shaped error with its HTTP status.

    ``seq`` > 0: the body came before it as that many :class:`NsqlReplyPart` (and ``body`` is "").
    """

    status: int
    content_type: str = "application/json"
    body: str = ""
    sql: str | None = None
    error_message: str | None = None
    error_code: str | None = None
    attempts: int = 0

    @property
    def parts(self) -> int:
        """How many parts carried the body before this message (0: the body is in it)."""
        return self.seq


class NsqlReplyPart(JobReply, frozen=True, kw_only=True, tag="modelbus.v1.nsql_reply_part"):
    """One piece of a body too large for one message (base64 in JSON, so any split of the UTF-8 is safe);
    ``seq`` 0, 1, ... is the order the pieces join in."""

    data: bytes


NsqlReplyMessage = NsqlReply | NsqlReplyPart
"""What arrives on an NSQL request's reply subject."""


def _failure(
    *, request_id: str, worker_id: str, seq: int, status: int, message: str, code: str | None,
    error_type: str, param: str | None,
) -> NsqlReply:  # fmt: skip
    del error_type, param  # an NSQL error carries its status and code; the ingress derives the rest
    return NsqlReply(
        request_id=request_id, worker_id=worker_id, seq=seq, status=status, error_message=message,
        error_code=code,
    )  # fmt: skip


NSQL: JobKind[NsqlRequest, NsqlReplyMessage] = JobKind(
    name="nsql",
    stream=NSQL_STREAM,
    wildcard=NSQL_SUBJECT,
    subject=lambda _queue: NSQL_SUBJECT,
    durable=lambda _queue: "nsql",
    request=NsqlRequest,
    replies=NsqlReplyMessage,
    commit=CommitPoint.RESULT,
    failure=_failure,
    worker="NSQL worker",
    label=lambda _queue: "NSQL",
    task="text_to_sql",
)


class NsqlQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/nsql`` (Spice's request; ``sampledataenabled`` is not accepted)."""

    query: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    model: str | None = None
    datasets: list[Annotated[str, msgspec.Meta(min_length=1)]] | None = None
    sample_data_enabled: bool = False
    # server-sent events: keep-alive comments while it works, then the answer in one event
    stream: bool = False


class NsqlDatasetStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One of an NSQL worker's datasets: ``ready``, or ``error`` with the structured code and why."""

    name: str
    status: str
    error_code: str | None = None  # e.g. ``dataset.not_found``
    error_message: str | None = None


class NsqlReady(msgspec.Struct, frozen=True, kw_only=True):
    """What a ready NSQL worker answers on ``modelbus.v1.nsql_ready`` (queue group ``nsql``).

    No responder means no NSQL worker is ready (the ingress answers 503).
    """

    worker_id: str
    capacity: int
    in_flight: int
    datasets: list[NsqlDatasetStatus]
