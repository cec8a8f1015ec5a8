"""The live state of one model a model worker hosts: its status for the heartbeats, its counters for
``$SRV.STATS`` (:mod:`modelbus.runtime.worker` publishes both)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from modelbus.runtime.work_queue.consumer import Job
from modelbus.schemas.heartbeat import ModelInfo
from modelbus.schemas.status import ErrorInfo, ModelStatus

__all__ = ("ModelState",)

log = structlog.get_logger(__name__)


class ModelState:
    """The live state of one hosted model. Setting a status wakes the heartbeat at once."""

    def __init__(self, model: str, info: ModelInfo, *, capacity: int) -> None:
        self.model = model
        self.info = info
        self.capacity = capacity
        self.status = ModelStatus.LOADING
        self.error: ErrorInfo | None = None
        self.error_message: str | None = None
        self.in_flight = 0
        self.lent = 0  # jobs waiting on their runtime tools: their generation slots are idle meanwhile
        self.requests = 0
        self.failures = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.busy_seconds = 0.0
        self._on_change: Callable[[], None] = lambda: None

    def count_job(self, job: Job[Any], seconds: float) -> None:
        """A job this worker took has ended after ``seconds``: its busy time, the tokens its span's usage
        reports, and whether it failed (the client leaving, or this worker shutting down, is no failure)."""
        if job.status >= 400 and job.status != 499 and job.error_code != "worker_shutdown":
            self.failures += 1
        self.busy_seconds += seconds
        usage = job.span.usage
        if usage is not None and usage.prompt_tokens:
            self.prompt_tokens += usage.prompt_tokens
        if usage is not None and usage.completion_tokens:
            self.completion_tokens += usage.completion_tokens

    def set_ready(self) -> None:
        self._set(ModelStatus.READY, None, None)

    def set_loading(self) -> None:
        self._set(ModelStatus.LOADING, None, None)

    def set_error(self, error: ErrorInfo, message: str) -> None:
        self._set(ModelStatus.ERROR, error, message)

    def _set(self, status: ModelStatus, error: ErrorInfo | None, message: str | None) -> None:
        changed = (status, error, message) != (self.status, self.error, self.error_message)
        self.status, self.error, self.error_message = status, error, message
        if changed:
            log.info(
                "model.status",
                model=self.model,
                status=status.value,
                error_code=error.code if error else None,
                error_message=message,
            )
            self._on_change()

    def watch(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    def counters(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "capacity": self.capacity,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "busy_seconds": round(self.busy_seconds, 6),
        }
