"""The ways a job can fail on the bus, each with the HTTP status and error code a client gets for it.

These classes are the one table from bus failures to HTTP errors: the ingress registers a single exception
handler for :class:`BusFailure`, and a worker that asks another kind of worker (NSQL asking a model) carries
the same status and code on. ``docs/errors.md`` is generated from :data:`BUS_FAILURES`.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = (
    "BUS_FAILURES",
    "BusFailure",
    "BusUnavailable",
    "DeadlinePassed",
    "JobFailed",
    "QueueFull",
    "ReplyIncomplete",
    "ReplyLost",
)


class BusFailure(Exception):
    """A job the bus could not carry through; ``status`` and ``code`` are what the client gets."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "bus_unavailable"
    when: ClassVar[str] = ""  # for the generated table

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class QueueFull(BusFailure):
    status, code = 429, "queue_full"
    when = "the queue is at its bound (`queue_depth`); `Retry-After` is the kind's `retry_after`"


class BusUnavailable(BusFailure):
    status, code = 503, "bus_unavailable"
    when = "NATS or JetStream cannot take the job now (not connected, no stream, a timeout)"


class DeadlinePassed(BusFailure, TimeoutError):
    status, code = 504, "timeout"
    when = "the job's deadline (`request_timeout`) passed before its answer was whole"


class ReplyLost(BusFailure):
    status, code = 502, "worker_lost"
    when = "the worker answering went silent for 4 keep-alive intervals"


class ReplyIncomplete(BusFailure):
    status, code = 502, "reply_incomplete"
    when = "a reply went missing or came out of order, or could not be read"


BUS_FAILURES: tuple[type[BusFailure], ...] = (
    QueueFull,
    BusUnavailable,
    DeadlinePassed,
    ReplyLost,
    ReplyIncomplete,
)


class JobFailed(Exception):
    """A handler's failure to answer a job: the consumer sends it as the kind's failure reply."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, type_: str = "server_error",
        param: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
