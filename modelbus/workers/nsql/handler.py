"""One NSQL job to its one reply: check the datasets, ask the model over the bus, answer, render, send.

The job's life on the bus (commit once the whole reply is sent, keep-alives, cancellation, the deadline, the
log line and the ``text_to_sql`` span) is the runtime's
:class:`~modelbus.runtime.work_queue.consumer.JobConsumer`; the model calls carry the span's
``traceparent``, so each of them (an ``ai_completion``) is its child.

Statuses of the reply (the ingress answers the HTTP client with them as they are):

- 200: the answer, rendered in the request's format (``application/sql``: the validated SQL, not run);
- 400: a requested dataset is not configured on this worker (``dataset_not_found``) or failed to load
  (``dataset_unavailable``; the message names the dataset, its error code and the file or table); no
  attempt produced SQL that passed the guard and ran (``sql_failed``; the message has the last error and
  the last SQL, and says when the model's context could not hold another attempt); the rendered result is
  larger than ``runtime.nsql.max_reply_bytes`` (``result_too_large``; a smaller one that exceeds a bus
  message goes in parts: :mod:`modelbus.workers.nsql.reply_parts`); the question plus its schema context is
  too long for the model (``context_length_exceeded``, after the one model call that said so);
- 503: the engine itself failed (``engine_unavailable``: another statement could not help);
- what :mod:`modelbus.workers.nsql.model_client` maps a failed model call to (429, 502, 503, 504, ...);
- 504: the deadline passed while answering (``timeout``, from the consumer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import structlog

from modelbus.config import NsqlSettings
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.runtime.work_queue.consumer import Job
from modelbus.schemas.nsql import NsqlReply, NsqlRequest
from modelbus.workers.nsql.context import TableSchema
from modelbus.workers.nsql.datasets import Dataset
from modelbus.workers.nsql.executor import Executor
from modelbus.workers.nsql.formats import render
from modelbus.workers.nsql.generate import Answered, ContextExceeded, answer
from modelbus.workers.nsql.model_client import BusModel, ModelCallError
from modelbus.workers.nsql.reply_parts import reply_messages
from modelbus.workers.nsql.stats import NsqlStats

__all__ = ("Handled", "NsqlHandler")

log = structlog.get_logger(__name__)


class Handled(msgspec.Struct, frozen=True, kw_only=True):
    """A request's reply and what its log line needs besides."""

    reply: NsqlReply
    outside_model_ms: float | None = None
    model_calls: int = 0
    sql_attempts: int = 0  # SQL statements the model wrote that were checked (and run unless SQL-only)
    rows: int = 0  # rows in the answer


class NsqlHandler:
    def __init__(
        self,
        *,
        worker_id: str,
        datasets: Sequence[Dataset],
        schemas: Mapping[str, TableSchema],
        executor: Executor,
        client: WorkQueueClient,
        settings: NsqlSettings,
        max_payload: int,
    ) -> None:
        self.worker_id = worker_id
        self.datasets = {d.name: d for d in datasets}
        self.schemas = dict(schemas)
        self.executor = executor
        self.client = client
        self.settings = settings
        self.max_reply_bytes = settings.max_reply_bytes
        self.max_payload = max_payload
        self.stats = NsqlStats()  # for $SRV.STATS

    def describe(self, request: NsqlRequest) -> Mapping[str, Any]:
        """The log line's fields: never the question itself (its length only)."""
        return {
            "model": request.model,
            "datasets": list(request.datasets),
            "format": request.format.value,
            "sample_data_enabled": request.sample_data_enabled,
            "query_chars": len(request.query),
        }

    async def handle(self, job: Job[NsqlRequest]) -> None:
        """Answer the job, then send the reply (in parts when it exceeds ``max_payload``)."""
        request = job.request
        job.span.input = request.query
        job.span.labels.update(datasets=",".join(request.datasets), format=request.format.value)
        model = BusModel(
            self.client,
            model=request.model,
            deadline=request.deadline,
            traceparent=job.span.traceparent,
            max_tokens=self.settings.max_sql_tokens,
        )
        try:
            # the request id on every log line the answer writes (the guard's, the engine's, ...)
            with structlog.contextvars.bound_contextvars(request_id=request.request_id):
                handled = await self.answer(request, model)
        finally:
            job.log["model_calls"] = model.calls
        reply = handled.reply
        job.result = handled
        job.ended(reply.status, reply.error_code, reply.error_message)
        job.span.add_output(reply.sql or "")
        job.span.labels["attempts"] = str(reply.attempts)
        job.log.update(attempts=reply.attempts, outside_model_ms=handled.outside_model_ms)
        for message in reply_messages(reply, self.max_payload, job.stamp):
            await job.publish(message)

    def done(self, job: Job[NsqlRequest], seconds: float) -> None:
        handled = job.result if isinstance(job.result, Handled) else None
        self.stats.record(job, handled, seconds)

    def _error(
        self, request: NsqlRequest, status: int, message: str, code: str, *, sql: str | None = None,
        attempts: int = 0,
    ) -> NsqlReply:  # fmt: skip
        return NsqlReply(
            request_id=request.request_id,
            worker_id=self.worker_id,
            status=status,
            error_message=message,
            error_code=code,
            sql=sql,
            attempts=attempts,
        )

    def _chosen(self, request: NsqlRequest) -> list[TableSchema] | NsqlReply:
        """The schemas of the requested datasets (when none are named: every one this worker has ready, or
        the reasons none is), or the 400 that says which is unknown or unavailable and why."""
        names = request.datasets or tuple(self.schemas) or tuple(self.datasets)
        if not names:
            return self._error(request, 400, "This NSQL worker has no datasets", "dataset_not_found")
        unknown = [n for n in names if n not in self.datasets]
        if unknown:
            listed = ", ".join(f"`{n}`" for n in unknown)
            known = ", ".join(self.datasets) or "(none)"
            return self._error(
                request,
                400,
                f"Dataset {listed} is not configured on this NSQL worker; its datasets: {known}",
                "dataset_not_found",
            )
        failed = [n for n in names if n not in self.schemas]
        if failed:
            details = "; ".join(self._why(self.datasets[n]) for n in failed)
            return self._error(request, 400, f"Dataset unavailable: {details}", "dataset_unavailable")
        return [self.schemas[n] for n in names]

    @staticmethod
    def _why(dataset: Dataset) -> str:
        code = dataset.error.code if dataset.error else "dataset.error"
        return f"`{dataset.name}` could not be loaded ({code}): {dataset.error_message or 'no details'}"

    async def answer(self, request: NsqlRequest, model: BusModel) -> Handled:
        """The reply to ``request``, with what its log line and counters need besides."""
        chosen = self._chosen(request)
        if isinstance(chosen, NsqlReply):
            return Handled(reply=chosen)
        try:
            outcome = await answer(
                request.query,
                datasets=chosen,
                executor=self.executor,
                ask_model=model,
                sql_only=not request.format.executes,
                sample_data_enabled=request.sample_data_enabled,
                max_attempts=self.settings.max_attempts,
                max_context_datasets=self.settings.max_context_datasets,
                candidates=self.settings.candidates,
                candidate_temperature=self.settings.candidate_temperature,
                retry_temperature=self.settings.retry_temperature,
            )
        except ModelCallError as exc:
            message = (
                self._too_long(request, chosen, exc.message)
                if isinstance(exc, ContextExceeded)
                else exc.message
            )
            reply = self._error(request, exc.status, message, exc.code, attempts=model.calls)
            # every call before the one that failed gave SQL that was tried
            return Handled(reply=reply, model_calls=model.calls, sql_attempts=max(0, model.calls - 1))
        if isinstance(outcome, Answered):
            reply = await self._answered(request, outcome)
        elif not outcome.retryable:
            reply = self._error(
                request,
                503,
                f"The query engine failed: {outcome.reason}",
                "engine_unavailable",
                sql=outcome.last_sql,
                attempts=outcome.attempts,
            )
        else:
            last = f" Last SQL: {outcome.last_sql}" if outcome.last_sql else ""
            full = " (the model's context cannot hold another one)" if outcome.context_exhausted else ""
            reply = self._error(
                request,
                400,
                f"No valid SQL after {outcome.attempts} attempt(s){full}. Last error: {outcome.reason}{last}",
                "sql_failed",
                sql=outcome.last_sql,
                attempts=outcome.attempts,
            )
        rows = len(outcome.result.rows) if isinstance(outcome, Answered) and outcome.result else 0
        return Handled(
            reply=reply,
            outside_model_ms=outcome.outside_model_ms,
            model_calls=model.calls,
            sql_attempts=outcome.attempts,
            rows=rows if reply.status == 200 else 0,
        )

    @staticmethod
    def _too_long(request: NsqlRequest, chosen: Sequence[TableSchema], model_says: str) -> str:
        """Why a question does not fit in the model, and what the client can change about it."""
        names = ", ".join(f"`{schema.name}`" for schema in chosen)
        samples = " with sample data" if request.sample_data_enabled else ""
        fewer = ", or turn sample_data_enabled off" if request.sample_data_enabled else ""
        return (
            f"The question plus the schema context of {names}{samples} is too long for the context of model "
            f"`{request.model}` ({model_says}). Ask a shorter question or name fewer datasets{fewer}."
        )

    async def _answered(self, request: NsqlRequest, outcome: Answered) -> NsqlReply:
        # in a thread: a large answer takes a while to render, and the worker's loop must keep acknowledging
        # progress (``in_progress``) and answering the bus meanwhile
        body = await anyio.to_thread.run_sync(
            render, request.format, outcome.result, outcome.sql, outcome.explanation
        )
        if len(body) > self.max_reply_bytes:  # the bound on what the worker and the ingress hold
            rows = len(outcome.result.rows) if outcome.result is not None else 0
            return self._error(
                request,
                400,
                f"The result ({rows} rows, {len(body)} bytes as {request.format.value}) is larger than the "
                f"answer limit ({self.max_reply_bytes} bytes, runtime.nsql.max_reply_bytes): aggregate, "
                "filter, or ask for fewer rows",
                "result_too_large",
                sql=outcome.sql,
                attempts=outcome.attempts,
            )
        return NsqlReply(
            request_id=request.request_id,
            worker_id=self.worker_id,
            status=200,
            content_type=request.format.content_type,
            body=body.decode(),
            sql=outcome.sql,
            attempts=outcome.attempts,
        )
