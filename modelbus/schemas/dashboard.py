"""What the status page (``GET /``) reads besides ``/v1/models/events``: queue depths over the last minutes
(``GET /metrics/queues``) and each worker's load (``GET /metrics/workers``, from ``$SRV.STATS``)."""

from __future__ import annotations

import msgspec

__all__ = ("NsqlLoad", "QueueSeries", "QueuesView", "WorkerLoad", "WorkerModelLoad", "WorkersView")


class QueueSeries(msgspec.Struct, frozen=True, kw_only=True):
    """One work queue: ``chat`` per model, or the shared ``nsql`` (``model`` empty)."""

    queue: str
    model: str
    depth: int | None  # now (null: the consumer could not be asked in time)
    waiting: int | None
    samples: tuple[tuple[float, int, int], ...]  # (unix seconds, depth, waiting), oldest first


class QueuesView(msgspec.Struct, frozen=True, kw_only=True):
    interval_s: float  # at most one sample per queue this often
    window_s: float  # samples older than this are dropped
    queues: tuple[QueueSeries, ...]


class WorkerModelLoad(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    capacity: int
    in_flight: int
    requests: int = 0
    failures: int = 0


class NsqlLoad(msgspec.Struct, frozen=True, kw_only=True):
    capacity: int
    in_flight: int


class WorkerLoad(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    kind: str  # model, nsql, embed
    models: dict[str, WorkerModelLoad] = {}
    nsql: NsqlLoad | None = None


class WorkersView(msgspec.Struct, frozen=True, kw_only=True):
    data: tuple[WorkerLoad, ...]
