"""The registry's view of each model (a value in the KV bucket) and the status-change event it publishes."""

from __future__ import annotations

import msgspec

from schemas.status import ErrorInfo, ModelStatus

__all__ = ("ModelStatusEvent", "ModelView", "WorkerView")


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
