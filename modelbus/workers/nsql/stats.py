"""An NSQL worker's counters, reported in its ``$SRV.STATS`` answer (``endpoints[].data.nsql``).

Counted once per request that was taken (not one skipped because its deadline passed or it was cancelled
while queued):

- ``requests``; ``ok``; ``failed``, by the reply's error code (``sql_failed``, ``timeout``, ``internal``, …);
  ``cancelled`` (the ingress gave up); ``handed_back`` (the worker stopped before answering);
- ``sql_attempts`` (SQL the model wrote that was checked, and run unless SQL-only), ``retries`` (attempts
  after a request's first), ``model_calls``, ``rows`` (rows in the answers);
- ``busy_seconds`` (time spent answering, summed over requests) and ``outside_model_seconds`` (the part of
  it spent on the prompt, guard, engine and rendering).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelbus.runtime.work_queue.consumer import Job

if TYPE_CHECKING:
    from modelbus.workers.nsql.handler import Handled

__all__ = ("NsqlStats",)


class NsqlStats:
    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.cancelled = 0
        self.handed_back = 0
        self.sql_attempts = 0
        self.retries = 0
        self.model_calls = 0
        self.rows = 0
        self.busy_seconds = 0.0
        self.outside_model_seconds = 0.0

    def record(self, job: Job[Any], handled: Handled | None, seconds: float) -> None:
        """One request's end (one it took: not one skipped while queued)."""
        self.requests += 1
        self.busy_seconds += seconds
        if job.handed_back:
            self.handed_back += 1
        elif job.status == 200:
            self.ok += 1
        elif job.status == 499:
            self.cancelled += 1
        else:
            code = job.error_code or "internal"
            self.failed[code] = self.failed.get(code, 0) + 1
        if handled is None:
            return
        self.model_calls += handled.model_calls
        self.sql_attempts += handled.sql_attempts
        self.retries += max(0, handled.sql_attempts - 1)
        self.rows += handled.rows
        if handled.outside_model_ms is not None:
            self.outside_model_seconds += handled.outside_model_ms / 1000

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": dict(self.failed),
            "cancelled": self.cancelled,
            "handed_back": self.handed_back,
            "sql_attempts": self.sql_attempts,
            "retries": self.retries,
            "model_calls": self.model_calls,
            "rows": self.rows,
            "busy_seconds": round(self.busy_seconds, 6),
            "outside_model_seconds": round(self.outside_model_seconds, 6),
        }
