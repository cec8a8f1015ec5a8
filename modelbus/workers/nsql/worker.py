"""The NSQL worker: makes the configured datasets ready on ClickHouse, then answers NSQL requests.

On enter it claims a data directory of its own (embedded engine: ``<base>/<n>`` under
``runtime.clickhouse.data_dir``, default ``<state_dir>/clickhouse``, both relative to the configuration
file's folder), opens the engine, loads every dataset and reads the schemas of those that loaded. A dataset
that cannot be loaded (missing file or table, unreadable file, ...) is logged and reported, and the worker
serves the others; a request naming it gets a 400 that says why.

On the bus it is discoverable through ``$SRV`` (kind ``nsql``, no model heartbeats: it hosts no model;
``$SRV.STATS`` carries its load, counters and datasets under ``nsql``: see
:mod:`modelbus.workers.nsql.stats`), answers ``modelbus.v1.nsql_ready`` (queue group ``nsql``) with its
datasets and their status, and pulls requests from the NSQL work queue (the runtime's
:class:`~modelbus.runtime.work_queue.consumer.JobConsumer` running
:class:`~modelbus.workers.nsql.handler.NsqlHandler`), asking models for SQL over the chat path clients use.
On exit it stops taking requests, stops answering the ready subject, lets running requests finish within
``runtime.shutdown_grace`` and hands back the rest.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from modelbus.config import Config
from modelbus.history.service import embedded_sink
from modelbus.history.sink import HistorySink
from modelbus.history.summary import HistoryResponder
from modelbus.history.table import history_table
from modelbus.runtime.clickhouse.datadir import open_engine
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.work_queue.cancellation import Cancellations
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.runtime.work_queue.consumer import JobConsumer
from modelbus.runtime.worker import WorkerRuntime
from modelbus.schemas.chat import CHAT
from modelbus.schemas.nsql import NSQL, NsqlDatasetStatus, NsqlReady, NsqlRequest
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.schemas.subjects import NSQL_READY_SUBJECT, encode_token
from modelbus.schemas.tools import TOOL, ToolRequest
from modelbus.workers.nsql.context import TableSchema, describe_dataset
from modelbus.workers.nsql.datasets import Dataset, load_datasets
from modelbus.workers.nsql.executor import Executor
from modelbus.workers.nsql.handler import NsqlHandler
from modelbus.workers.nsql.stats import NsqlStats
from modelbus.workers.nsql.tools import ToolHandler

__all__ = ("NSQL_QUEUE_GROUP", "NsqlWorker", "data_dir_base")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
NSQL_QUEUE_GROUP = "nsql"


def data_dir_base(config: Config, config_dir: Path) -> Path:
    """Where embedded engines' data directories are claimed (one numbered slot per worker process)."""
    configured = config.runtime.clickhouse.data_dir
    base = Path(configured).expanduser() if configured else Path(config.runtime.state_dir) / "clickhouse"
    return (config_dir / base).resolve()


class NsqlWorker:
    """``async with NsqlWorker(...)``: ready to answer once entered; drains on exit.

    ``engine`` lets a caller supply an engine it opened (and closes) itself: tests share their process's
    one embedded engine this way. Without it the worker claims a data directory and opens its own.
    """

    def __init__(
        self,
        nc: Client,
        config: Config,
        *,
        config_dir: Path,
        worker_id: str | None = None,
        engine: ClickHouse | None = None,
        keep_history: bool | None = None,
    ) -> None:
        self.nc = nc
        self.config = config
        self.config_dir = config_dir
        self._given_engine = engine
        self.engine: ClickHouse | None = engine
        self._keep_history = keep_history
        self._data_dir: Path | None = None
        self.history: HistorySink | None = None
        self._recorder: TaskRecorder | None = None
        self.datasets: list[Dataset] = []
        self.schemas: dict[str, TableSchema] = {}
        self.runtime = WorkerRuntime(
            nc,
            kind="nsql",
            models=[],  # it hosts no model: anything that heartbeats would be listed as one
            heartbeat=config.runtime.heartbeat,
            worker_id=worker_id,
            description="modelbus NSQL worker",
            extra_stats=self.stats,
        )
        self.cancellations = Cancellations()
        self.consumer: JobConsumer[NsqlRequest] | None = None
        self.tool_consumer: JobConsumer[ToolRequest] | None = None  # models' runtime tool calls
        self.handler: NsqlHandler | None = None
        self._ready_sub: Subscription | None = None
        self._stack = AsyncExitStack()

    @property
    def worker_id(self) -> str:
        return self.runtime.worker_id

    def ready_info(self) -> NsqlReady:
        return NsqlReady(
            worker_id=self.worker_id,
            capacity=self.config.runtime.nsql.capacity,
            in_flight=self.consumer.in_flight if self.consumer else 0,
            datasets=[
                NsqlDatasetStatus(
                    name=d.name,
                    status=d.status.value,
                    error_code=d.error.code if d.error else None,
                    error_message=d.error_message,
                )
                for d in self.datasets
            ],
        )

    def stats(self) -> dict[str, Any]:
        """This worker's part of ``$SRV.STATS``: its load, its counters and its datasets."""
        ready = self.ready_info()
        counters = self.handler.stats if self.handler is not None else NsqlStats()
        datasets = {d.name: {"status": d.status, "error_code": d.error_code} for d in ready.datasets}
        history: dict[str, Any] = {}
        if self._recorder is not None:
            history["recorder"] = self._recorder.stats()
        if self.history is not None:
            history["sink"] = self.history.stats()
        return {
            "nsql": {
                "capacity": ready.capacity,
                "in_flight": ready.in_flight,
                **counters.as_dict(),
                "datasets": datasets,
            },
            "history": history,
        }

    async def _open_engine(self, stack: AsyncExitStack) -> ClickHouse:
        if self._given_engine is not None:
            return self._given_engine
        base = data_dir_base(self.config, self.config_dir)
        engine, self._data_dir = await open_engine(stack, self.config.runtime.clickhouse, base=base)
        return engine

    def _history_sink(self, engine: ClickHouse) -> HistorySink | None:
        """With the embedded engine, this worker keeps its own copy of the task history (for ``history:``
        datasets); ``keep_history`` overrides that (a sink per worker id, for an engine given to it)."""
        settings = self.config.runtime.history
        keep = self._keep_history
        if keep is None:
            keep = engine.embedded and self._data_dir is not None
        if not (keep and settings.enabled):
            return None
        if self._data_dir is not None:
            return embedded_sink(self.nc, engine, self.config, self._data_dir)
        return HistorySink(
            self.nc, engine, settings, consumer=f"history-{encode_token(self.worker_id)}",
            inactive_threshold=settings.retention,
        )  # fmt: skip

    async def _prepare_datasets(self, engine: ClickHouse) -> None:
        loaded = await load_datasets(
            engine,
            self.config.datasets,
            base_dir=self.config_dir,
            history_keep_days=self.config.runtime.history.keep_days,
        )
        self.datasets = [await self._describe(engine, d) if d.ready else d for d in loaded]
        for dataset in self.datasets:
            if dataset.name in self.schemas:
                log.info(
                    "nsql_worker.dataset_ready",
                    dataset=dataset.name,
                    table=str(dataset.table),
                    rows=dataset.rows,
                )
            else:
                log.error(
                    "nsql_worker.dataset_unavailable",
                    dataset=dataset.name,
                    source=dataset.source,
                    error_code=dataset.error.code if dataset.error else None,
                    error_message=dataset.error_message,
                )

    async def _describe(self, engine: ClickHouse, dataset: Dataset) -> Dataset:
        """Read a loaded dataset's schema for the prompt; one whose schema cannot be read is an error."""
        settings = self.config.runtime.nsql
        try:
            self.schemas[dataset.name] = await describe_dataset(
                engine,
                dataset,
                sample_rows=settings.sample_rows,
                distinct_values=settings.distinct_values,
            )
        except Exception as exc:  # noqa: BLE001 - one dataset's problem must not stop the worker
            return msgspec.structs.replace(
                dataset,
                status=ModelStatus.ERROR,
                error=ErrorInfo.of(ErrorCategory.DATASET, ErrorType.INTERNAL),
                error_message=f"dataset {dataset.name!r}: its schema could not be read: {exc}",
            )
        return dataset

    async def _answer_ready(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(_encoder.encode(self.ready_info()))

    async def _stop_ready(self) -> None:
        sub, self._ready_sub = self._ready_sub, None
        if sub is not None:
            with anyio.move_on_after(2, shield=True):
                await sub.unsubscribe()

    async def _drain(self) -> None:
        """Take no new requests, stop saying ready, and let running ones finish (bounded by the grace)."""
        consumers = [c for c in (self.consumer, self.tool_consumer) if c is not None]
        for consumer in consumers:
            consumer.stop_intake()
        await self._stop_ready()
        await self.runtime.goodbye()
        with anyio.move_on_after(self.config.runtime.shutdown_grace, shield=True) as scope:
            for consumer in consumers:
                await consumer.wait_idle()
        log.info(
            "nsql_worker.drained", timed_out=scope.cancelled_caught,
            still_running=sum(c.in_flight for c in consumers),
        )  # fmt: skip

    async def __aenter__(self) -> NsqlWorker:
        async with AsyncExitStack() as stack:
            engine = await self._open_engine(stack)
            self.engine = engine
            sink = self._history_sink(engine)
            if sink is not None:
                self.history = await stack.enter_async_context(sink)
            if self.history is not None or (not engine.embedded and self.config.runtime.history.enabled):
                # the status page's recent work, from this worker's copy or the server's shared table
                table = history_table(engine.settings.database, self.config.runtime.history)
                await stack.enter_async_context(HistoryResponder(self.nc, engine, table))
            await self._prepare_datasets(engine)
            await stack.enter_async_context(self.runtime)
            runtime = self.config.runtime
            client = await stack.enter_async_context(WorkQueueClient(self.nc, {CHAT: runtime.chat}))
            await self.cancellations.subscribe(self.nc)
            stack.push_async_callback(self.cancellations.unsubscribe)
            executor = Executor(engine)
            handler = self.handler = NsqlHandler(
                worker_id=self.worker_id,
                datasets=self.datasets,
                schemas=self.schemas,
                executor=executor,
                client=client,
                settings=runtime.nsql,
                max_payload=self.nc.max_payload,
            )
            recorder = self._recorder = TaskRecorder(
                self.nc, runtime.history, component="nsql_worker", worker_id=self.worker_id
            )
            await recorder.prepare()
            self.consumer = JobConsumer(
                self.nc, NSQL, handler, worker_id=self.worker_id, settings=runtime.nsql,
                cancellations=self.cancellations, recorder=recorder, capacity=lambda: runtime.nsql.capacity,
            )  # fmt: skip
            self.tool_consumer = JobConsumer(
                self.nc, TOOL, ToolHandler(handler, executor), worker_id=self.worker_id,
                settings=runtime.nsql, cancellations=self.cancellations, recorder=recorder,
                capacity=lambda: runtime.nsql.capacity,
            )  # fmt: skip
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            stack.push_async_callback(self._drain)
            await tg.start(self.consumer.run, name="nsql-consumer")
            await tg.start(self.tool_consumer.run, name="tool-consumer")
            self._ready_sub = await self.nc.subscribe(
                NSQL_READY_SUBJECT, queue=NSQL_QUEUE_GROUP, cb=self._answer_ready
            )
            stack.push_async_callback(self._stop_ready)
            log.info(
                "nsql_worker.ready",
                worker_id=self.worker_id,
                datasets=[d.name for d in self.datasets if d.name in self.schemas],
                unavailable=[d.name for d in self.datasets if d.name not in self.schemas],
                capacity=self.config.runtime.nsql.capacity,
            )
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)
