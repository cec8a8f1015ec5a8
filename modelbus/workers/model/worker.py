"""The model worker: hosts configured models, keeps each one ready, and reports them on the bus."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType

import anyio
import anyio.abc
import structlog
from nats.aio.client import Client

from modelbus.config import Config, ModelConfig
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.work_queue.cancellation import Cancellations
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.runtime.work_queue.consumer import JobConsumer, drain
from modelbus.runtime.worker import WorkerRuntime
from modelbus.schemas.chat import CHAT, ChatRequest
from modelbus.schemas.heartbeat import ModelInfo
from modelbus.schemas.status import ErrorInfo, ModelStatus
from modelbus.schemas.tools import TOOL
from modelbus.workers.model.chat_handler import ChatHandler
from modelbus.workers.model.providers import Provider, create_provider, keep_ready
from modelbus.workers.model.providers.factory import capacity_of
from modelbus.workers.model.state import ModelState
from modelbus.workers.model.tool_loop import ToolLoop

__all__ = ("ModelWorker", "model_info")

log = structlog.get_logger(__name__)


def model_info(model: ModelConfig) -> ModelInfo:
    return ModelInfo(
        owned_by=model.from_,
        datasets=model.datasets,
        supports_responses_api=True,  # POST /v1/responses serves every model (adapted or native)
        can_generate_sql=True,
    )


class ModelWorker:
    """``async with ModelWorker(...)``: models start loading on enter; on exit the worker says goodbye."""

    def __init__(
        self,
        nc: Client,
        config: Config,
        models: Sequence[ModelConfig],
        *,
        environ: Mapping[str, str],
        worker_id: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("a model worker needs at least one model")
        self.config = config
        self.providers: dict[str, Provider] = {}
        for model in models:
            capacity = capacity_of(model)
            state = ModelState(model.name, model_info(model), capacity=capacity)
            self.providers[model.name] = create_provider(model, state, environ=environ)
        self._models = {m.name: m for m in models}
        self.runtime = WorkerRuntime(
            nc,
            kind="model",
            models=[p.state for p in self.providers.values()],
            heartbeat=config.runtime.heartbeat,
            worker_id=worker_id,
            extra_stats=lambda: {"history": self.recorder.stats()},
        )
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self._checking: set[str] = set()
        self.cancellations = Cancellations()
        self.recorder = TaskRecorder(
            nc, config.runtime.history, component="model_worker", worker_id=self.runtime.worker_id
        )
        # runtime tool calls of the models with tools, answered by NSQL workers
        self.tool_client = WorkQueueClient(nc, {TOOL: config.runtime.nsql})
        self._uses_tools = any(m.params.tools for m in models)
        self.consumers = {name: self._consumer(name, provider) for name, provider in self.providers.items()}

    def _consumer(self, name: str, provider: Provider) -> JobConsumer[ChatRequest]:
        """The chat jobs of one model: its own queue, pulled only while it is ready, into its free slots."""
        state = provider.state

        def count(in_flight: int) -> None:
            state.in_flight = in_flight

        model = self._models[name]
        tools = None
        if model.params.tools:
            tools = ToolLoop(
                provider, model, client=self.tool_client, nc=self.runtime.nc, recorder=self.recorder,
                settings=self.config.runtime.nsql,
            )  # fmt: skip
        handler = ChatHandler(provider, model, on_unhealthy=partial(self._unhealthy, name), tools=tools)

        def capacity() -> int:  # a job waiting on its tools lends its slot, up to one more per slot
            return state.capacity + min(state.lent, state.capacity)

        return JobConsumer(
            self.runtime.nc, CHAT, handler, queue=name, worker_id=self.runtime.worker_id,
            settings=self.config.runtime.chat, cancellations=self.cancellations, recorder=self.recorder,
            capacity=capacity, ready=lambda: state.status is ModelStatus.READY, on_count=count,
        )  # fmt: skip

    def _start_checks(self, name: str) -> None:
        """Bring the model to ready (again), unless its checks are already running."""
        if name in self._checking or self._tg is None:
            return
        provider, params = self.providers[name], self._models[name].params

        async def run() -> None:
            try:
                await keep_ready(
                    provider, initial_backoff=params.recheck_initial, max_backoff=params.recheck_max
                )
            finally:
                self._checking.discard(name)

        self._checking.add(name)
        self._tg.start_soon(run, name=f"keep_ready:{name}")

    async def _watch(self, name: str) -> None:
        """Each time the model's engine stops serving (a llama-server died): report it, and recover."""
        provider = self.providers[name]
        while True:
            lost = await provider.watch()
            self._unhealthy(name, lost.error, lost.message)

    def _unhealthy(self, name: str, error: ErrorInfo, message: str) -> None:
        """A request showed the model cannot serve (a revoked key): report it, and check until it can."""
        self.providers[name].state.set_error(error, message)
        self._start_checks(name)

    async def _drain(self) -> None:
        """Take no new requests, leave the registry, and let running ones finish (bounded by the grace)."""
        running = await drain(self.consumers.values(), self.runtime, grace=self.config.runtime.shutdown_grace)
        log.info("model_worker.drained", timed_out=running > 0, still_running=running)

    @property
    def worker_id(self) -> str:
        return self.runtime.worker_id

    async def __aenter__(self) -> ModelWorker:
        async with AsyncExitStack() as stack:
            for provider in self.providers.values():
                stack.push_async_callback(provider.aclose)
            await stack.enter_async_context(self.runtime)
            await self.recorder.prepare()
            await self.cancellations.subscribe(self.runtime.nc)
            stack.push_async_callback(self.cancellations.unsubscribe)
            if self._uses_tools:
                await stack.enter_async_context(self.tool_client)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            stack.push_async_callback(self._drain)
            self._tg = tg
            for name in self.providers:
                tg.start_soon(self._watch, name, name=f"watch:{name}")
                self._start_checks(name)
            for name, consumer in self.consumers.items():
                await tg.start(consumer.run, name=f"chat:{name}")
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)
