"""The registry's view of each model (a value in the KV bucket), the status-change event it publishes, and
the other events of the ``GET /v1/models/events`` stream."""

from __future__ import annotations

import msgspec

from modelbus.schemas.status import ErrorInfo, ModelStatus

__all__ = (
    "GROUP_OWNER",
    "ModelRemoved",
    "ModelStatusEvent",
    "ModelView",
    "SnapshotComplete",
    "WorkerView",
    "status_changed",
    "status_event",
)


# the ``owned_by`` of a load-balancing worker (``workers:``), as Spice lists its workers
GROUP_OWNER = "spiceai"


class WorkerView(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    status: ModelStatus
    capacity: int = 1
    error_code: str | None = None


class ModelView(msgspec.Struct, frozen=True, kw_only=True, tag="modelbus.v1.model_view", tag_field="type"):
    """One model as ``/v1/models`` shows it: the aggregate over every worker that hosts it.

    Only fields that change with status are here (no in-flight counts), so the view is rewritten only
    when something a client can see changes.
    """

    id: str
    owned_by: str
    status: ModelStatus
    datasets: tuple[str, ...] = ()
    error: ErrorInfo | None = None
    error_message: str | None = None
    supports_responses_api: bool = False
    can_generate_sql: bool = False
    workers: tuple[WorkerView, ...] = ()
    created: int = 0  # unix seconds when the model was first seen (OpenAI's ``created``)
    ever_ready: bool = False
    changed_at: float = 0.0


class ModelStatusEvent(
    msgspec.Struct, frozen=True, kw_only=True, tag="modelbus.v1.model_status", tag_field="type"
):
    """Published on ``modelbus.v1.events.model.<model>`` each time a model's status or error changes."""

    model: str
    status: ModelStatus
    previous: ModelStatus | None
    error: ErrorInfo | None = None
    error_message: str | None = None
    ready_workers: int = 0
    workers: int = 0
    revision: int = 0  # the KV revision of the view that carried this change
    at: float = 0.0


def status_changed(previous: ModelView | None, view: ModelView) -> bool:
    """Whether replacing ``previous`` by ``view`` is a status change (an event): status or error code."""
    if previous is None:
        return True
    code = view.error.code if view.error is not None else None
    previous_code = previous.error.code if previous.error is not None else None
    return (previous.status, previous_code) != (view.status, code)


def status_event(
    model: str, previous: ModelView | None, view: ModelView, revision: int
) -> ModelStatusEvent | None:
    """The event that replacing ``previous`` by ``view`` (at KV ``revision``) carries; None if no change."""
    if not status_changed(previous, view):
        return None
    return ModelStatusEvent(
        model=model,
        status=view.status,
        previous=previous.status if previous is not None else None,
        error=view.error,
        error_message=view.error_message,
        ready_workers=sum(w.status is ModelStatus.READY for w in view.workers),
        workers=len(view.workers),
        revision=revision,
        at=view.changed_at,
    )


class SnapshotComplete(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/models/events``: the snapshot has been sent: ``models`` views, as of ``revision``."""

    models: int
    revision: int


class ModelRemoved(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/models/events``: the model is no longer in the registry's views (as of ``revision``)."""

    model: str
    revision: int
