"""The registry's worker table and how workers aggregate into one view per model. Pure: no I/O.

:class:`WorkerTable` remembers the last heartbeat of every (model, worker) and when it arrived, on an
injected monotonic clock; it drops a worker after the TTL or at its goodbye, and remembers why a model lost
its last worker. :func:`compute_view` turns that into the :class:`~modelbus.schemas.views.ModelView` the
registry wants in the KV bucket, as *content* only (``created``, ``ever_ready`` and ``changed_at`` zeroed), so
two computed views compare equal exactly when a client could not tell them apart. :func:`stamp` fills those
three fields in at write time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from modelbus.schemas.heartbeat import Goodbye, Heartbeat, ModelInfo
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.schemas.views import ModelView, WorkerView

__all__ = (
    "Departure",
    "WorkerTable",
    "aggregate",
    "compute_view",
    "content",
    "group_view",
    "info_of",
    "stamp",
    "workers_gone",
)

TIMEOUT = ErrorInfo.of(ErrorCategory.WORKER, ErrorType.TIMEOUT)
NOT_FOUND = ErrorInfo.of(ErrorCategory.WORKER, ErrorType.NOT_FOUND)
UNKNOWN = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.UNKNOWN)
SHUT_DOWN = "the last worker serving this model shut down"
NO_WORKER = "no worker is serving this model"
_PRECEDENCE = (ModelStatus.READY, ModelStatus.LOADING, ModelStatus.ERROR)


@dataclass(frozen=True, slots=True)
class Departure:
    """Why a model has no worker left (set when its last worker goes, cleared when one comes back)."""

    error: ErrorInfo
    message: str
    info: ModelInfo


@dataclass(slots=True)
class _Entry:
    beat: Heartbeat
    seen: float


class WorkerTable:
    """Live workers per model: a worker silent for ``ttl`` seconds of ``clock`` is dropped."""

    def __init__(self, *, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._models: dict[str, dict[str, _Entry]] = {}
        self._departed: dict[str, Departure] = {}

    def heartbeat(self, beat: Heartbeat) -> None:
        self._models.setdefault(beat.model, {})[beat.worker_id] = _Entry(beat, self._clock())
        self._departed.pop(beat.model, None)

    def goodbye(self, bye: Goodbye) -> bool:
        """Drop the worker at once; False if it was not known (then nothing changed)."""
        workers = self._models.get(bye.model, {})
        entry = workers.pop(bye.worker_id, None)
        if entry is None:
            return False
        if not workers:
            del self._models[bye.model]
            self._departed[bye.model] = Departure(NOT_FOUND, SHUT_DOWN, entry.beat.info)
        return True

    def expire(self) -> set[str]:
        """Drop every worker silent for the TTL; returns the models that lost one."""
        now = self._clock()
        touched: set[str] = set()
        for model, workers in list(self._models.items()):
            silent = [e for e in workers.values() if now - e.seen >= self.ttl]
            if not silent:
                continue
            touched.add(model)
            for entry in silent:
                del workers[entry.beat.worker_id]
            if not workers:
                del self._models[model]
                last = max(silent, key=lambda e: (e.seen, e.beat.worker_id))
                message = f"no heartbeat from worker {last.beat.worker_id} for {self.ttl:.1f}s"
                self._departed[model] = Departure(TIMEOUT, message, last.beat.info)
        return touched

    def extend(self) -> None:
        """Count every worker as heard from now: a registry that could not listen cannot judge silence."""
        now = self._clock()
        for workers in self._models.values():
            for entry in workers.values():
                entry.seen = now

    def workers(self, model: str) -> tuple[Heartbeat, ...]:
        """The last heartbeat of every live worker of ``model``, by worker id."""
        entries = self._models.get(model, {})
        return tuple(entries[w].beat for w in sorted(entries))

    def departure(self, model: str) -> Departure | None:
        return self._departed.get(model)

    def models(self) -> set[str]:
        """Every model with a live worker or a remembered departure."""
        return set(self._models) | set(self._departed)


def info_of(view: ModelView) -> ModelInfo:
    return ModelInfo(
        owned_by=view.owned_by,
        datasets=view.datasets,
        supports_responses_api=view.supports_responses_api,
        can_generate_sql=view.can_generate_sql,
    )


def _view(
    model: str,
    info: ModelInfo,
    status: ModelStatus,
    *,
    error: ErrorInfo | None = None,
    message: str | None = None,
    workers: tuple[WorkerView, ...] = (),
) -> ModelView:
    return ModelView(
        id=model,
        owned_by=info.owned_by,
        status=status,
        datasets=info.datasets,
        error=error,
        error_message=message,
        supports_responses_api=info.supports_responses_api,
        can_generate_sql=info.can_generate_sql,
        workers=workers,
    )


def aggregate(model: str, beats: Iterable[Heartbeat]) -> ModelView:
    """Ready if any worker is ready, else loading if any is loading, else error.

    The info, and in ``error`` the error, come from the first worker (by id) in the winning status.
    """
    ordered = sorted(beats, key=lambda b: b.worker_id)
    if not ordered:
        raise ValueError("a model without workers has no aggregate")
    status = next(s for s in _PRECEDENCE if any(b.status is s for b in ordered))
    lead = next(b for b in ordered if b.status is status)
    workers = tuple(
        WorkerView(
            worker_id=b.worker_id,
            status=b.status,
            capacity=b.capacity,
            error_code=b.error.code if b.error is not None else None,
        )
        for b in ordered
    )
    if status is ModelStatus.ERROR:
        return _view(
            model, lead.info, status, error=lead.error or UNKNOWN, message=lead.error_message, workers=workers
        )
    return _view(model, lead.info, status, workers=workers)


def compute_view(
    model: str,
    *,
    workers: tuple[Heartbeat, ...],
    departure: Departure | None,
    configured: Mapping[str, ModelInfo],
    known: ModelView | None,
    warm: bool,
) -> ModelView | None:
    """The content the registry wants for ``model``; None means it should not be in the bucket.

    ``known`` is the view the registry last read from (or wrote to) the bucket, ``warm`` whether it has
    listened to heartbeats for a whole TTL. A model no worker has reported since start is judged only
    when warm: an unconfigured one is then dropped; a configured one is ``worker.not_found``, unless
    the bucket already says that its workers are gone (a ``worker.*`` error with no workers), which is
    kept so a restarted registry does not rewrite what its predecessor concluded.
    """
    if workers:
        return aggregate(model, workers)
    if departure is not None:
        return _view(
            model, departure.info, ModelStatus.ERROR, error=departure.error, message=departure.message
        )
    return _unreported(model, configured.get(model), known, warm=warm)


def _unreported(
    model: str, info: ModelInfo | None, known: ModelView | None, *, warm: bool
) -> ModelView | None:
    """A model no worker has reported since start (see :func:`compute_view`)."""
    if not warm:
        if known is not None:
            return content(known)
        return None if info is None else _view(model, info, ModelStatus.LOADING)
    if info is None:
        return None
    if known is None:
        return _view(model, info, ModelStatus.ERROR, error=NOT_FOUND, message=NO_WORKER)
    if workers_gone(known):
        return content(known)
    return _view(model, info_of(known), ModelStatus.ERROR, error=NOT_FOUND, message=NO_WORKER)


def group_view(name: str, info: ModelInfo, members: Sequence[tuple[str, ModelView | None]]) -> ModelView:
    """A load-balancing worker (``workers:``) as one model: ready if any member is, else loading if any
    is, else error, naming each member's status. Its ``workers`` are its members, in routing order."""
    listed = tuple(
        WorkerView(
            worker_id=member,
            status=view.status if view is not None else ModelStatus.ERROR,
            capacity=sum(w.capacity for w in view.workers) if view is not None else 0,
            error_code=view.error.code if view is not None and view.error is not None else None,
        )
        for member, view in members
    )
    status = next((s for s in _PRECEDENCE if any(w.status is s for w in listed)), ModelStatus.ERROR)
    if status is not ModelStatus.ERROR:
        return _view(name, info, status, workers=listed)
    failed = [view for _member, view in members if view is not None and view.error is not None]
    kind = failed[0].error.type if failed and failed[0].error is not None else ErrorType.NOT_FOUND
    reasons = "; ".join(
        f"{member}: {view.error_message or view.status.value}"
        if view is not None
        else f"{member}: not reported"
        for member, view in members
    )
    return _view(
        name, info, status, error=ErrorInfo.of(ErrorCategory.WORKER, kind),
        message=f"no member is ready ({reasons})", workers=listed,
    )  # fmt: skip


def workers_gone(view: ModelView) -> bool:
    """The view says the model's workers are gone: a ``worker.*`` error that lists no worker.

    A registry keeps such a view while no worker reports, and any worker's heartbeat disproves it.
    """
    return (
        view.status is ModelStatus.ERROR
        and not view.workers
        and view.error is not None
        and view.error.category is ErrorCategory.WORKER
    )


def content(view: ModelView) -> ModelView:
    """The view without its bookkeeping (``created``, ``ever_ready``, ``changed_at``)."""
    return msgspec.structs.replace(view, created=0, ever_ready=False, changed_at=0.0)


def stamp(view: ModelView, previous: ModelView | None, now: float) -> ModelView:
    """The record to write: ``created`` kept from ``previous``, ``ever_ready`` sticky, ``changed_at`` now."""
    created = previous.created if previous is not None and previous.created else int(now)
    ever_ready = (previous is not None and previous.ever_ready) or view.status is ModelStatus.READY
    return msgspec.structs.replace(view, created=created, ever_ready=ever_ready, changed_at=now)
