"""What every kind of job on a work queue shares on the wire, and the description of a kind.

A client publishes a :class:`JobRequest` onto the kind's JetStream work queue; the one worker that takes it
answers on ``reply_to`` with :class:`JobReply` messages numbered by ``seq`` from 0, so the client notices a
gap instead of passing it on, and sends a :class:`Keepalive` (``seq`` -1) while it is quiet, so the client
notices a worker that went silent. The kind's :class:`CommitPoint` says when the worker acknowledges the
message, which both sides must agree on: before it, a worker that stops is replaced by another delivery
(whose replies start again at 0); after it, the client has what it has, and a failure is an error reply.

A new kind of job is its request and reply Structs plus one :class:`JobKind` (see :data:`~.chat.CHAT` and
:data:`~.nsql.NSQL`); the runtime's client and consumer (``modelbus.runtime.work_queue``) do the rest.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec

__all__ = ("CommitPoint", "FailureFactory", "JobKind", "JobReply", "JobRequest", "Keepalive")


class CommitPoint(enum.Enum):
    """When the worker acknowledges a job's message (FastStream calls this the ack policy)."""

    FIRST_REPLY = "first_reply"  # the first reply commits: the client has seen output (chat streams)
    RESULT = "result"  # only the whole answer commits: parts before it are redone by another delivery


class JobRequest(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The envelope of every job; ``reply_to``, ``deadline`` and ``submitted_at`` are set by the client."""

    request_id: str  # the bus id: a uuid per request, also JetStream's de-duplication id
    reply_to: str = ""
    deadline: float = 0.0  # unix seconds; a worker never starts a job past it
    traceparent: str | None = None  # the span that asked for the work (the worker's span is its child)
    submitted_at: float = 0.0  # unix seconds when it was queued; a worker logs the wait


class JobReply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The envelope of every reply: which request, from which worker, in which place."""

    request_id: str
    worker_id: str
    seq: int = 0


class Keepalive(JobReply, frozen=True, tag="modelbus.v1.keepalive"):
    """A worker holds the request and is alive (``seq`` -1: not part of the answer)."""


class FailureFactory(Protocol):
    def __call__(
        self, *, request_id: str, worker_id: str, seq: int, status: int, message: str, code: str | None,
        error_type: str, param: str | None,
    ) -> JobReply: ...  # fmt: skip


Req = TypeVar("Req", bound=JobRequest)
Rep = TypeVar("Rep", bound=JobReply)


@dataclass(frozen=True, eq=False)
class JobKind(Generic[Req, Rep]):
    """One kind of job: its stream and subjects, its Structs, its commit point and its failure reply.

    A kind has one queue (``queue`` "") or one per name (chat: one per model, each with its own bound and
    durable consumer).
    """

    name: str  # "chat", "nsql": in logs (``<name>.request``) and metrics
    stream: str  # the JetStream work-queue stream
    wildcard: str  # the stream's subjects
    subject: Callable[[str], str]  # queue name -> the subject its jobs are published on
    durable: Callable[[str], str]  # queue name -> the durable consumer its workers share
    request: type[Req]
    replies: Any  # the union of the reply Structs (without Keepalive)
    commit: CommitPoint
    failure: FailureFactory  # the reply that carries an error
    worker: str  # who answers, for messages: "model worker", "NSQL worker"
    label: Callable[[str], str]  # queue name -> how messages name it: "model `x`", "NSQL"
    task: str  # the worker's span in the task history: ai_completion, text_to_sql
