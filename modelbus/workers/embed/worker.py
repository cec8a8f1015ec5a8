"""The embedding worker: hosts configured embedding models, keeps each ready, and reports them on the bus.

Per model: its state (heartbeats, ``$SRV.STATS``, listed in ``/v1/models`` with its datasets), its backend,
a :class:`~modelbus.workers.embed.batcher.Batcher` (whose counters are in ``$SRV.STATS`` under ``embed``),
and a consumer of its work queue (``modelbus.v1.embed.<model>``) that pulls only while it is ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.client import Client

from modelbus.config import Config, EmbeddingConfig
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.work_queue.cancellation import Cancellations
from modelbus.runtime.work_queue.consumer import JobConsumer, drain
from modelbus.runtime.worker import WorkerRuntime
from modelbus.schemas.embeddings import EMBED, EmbedRequest
from modelbus.schemas.heartbeat import ModelInfo
from modelbus.schemas.status import ModelStatus
from modelbus.workers.embed.batcher import Batcher
from modelbus.workers.embed.handler import EmbedHandler
from modelbus.workers.embed.local import LocalEmbedder
from modelbus.workers.embed.provider import OpenAIEmbedder
from modelbus.workers.model.providers.base import keep_ready
from modelbus.workers.model.state import ModelState

__all__ = ("EmbedWorker", "embedding_info")

log = structlog.get_logger(__name__)


Embedder = OpenAIEmbedder | LocalEmbedder


def _embedder(model: EmbeddingConfig, state: ModelState, environ: Mapping[str, str]) -> Embedder:
    if model.provider == "local":
        return LocalEmbedder(model, state, environ=environ)
    return OpenAIEmbedder(model, state)


def embedding_info(model: EmbeddingConfig) -> ModelInfo:
    return ModelInfo(owned_by=model.from_, datasets=model.datasets, supports_responses_api=False)


class EmbedWorker:
    """``async with EmbedWorker(...)``: models are checked on enter; on exit the worker drains and leaves."""

    def __init__(
        self,
        nc: Client,
        config: Config,
        models: Sequence[EmbeddingConfig],
        *,
        environ: Mapping[str, str],
        worker_id: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("an embedding worker needs at least one embedding model")
        self.config = config
        self.models = {m.name: m for m in models}
        self.states = {
            m.name: ModelState(m.name, embedding_info(m), capacity=m.params.capacity * m.params.max_batch)
            for m in models
        }
        self.embedders = {m.name: _embedder(m, self.states[m.name], environ) for m in models}
        self.batchers = {
            m.name: Batcher(
                self.embedders[m.name].embed, max_batch=m.params.max_batch, wait=m.params.batch_wait,
                capacity=m.params.capacity,
            )
            for m in models
        }  # fmt: skip
        self.runtime = WorkerRuntime(
            nc, kind="embed", models=list(self.states.values()), heartbeat=config.runtime.heartbeat,
            worker_id=worker_id, extra_stats=self.stats,
        )  # fmt: skip
        self.cancellations = Cancellations()
        self.recorder = TaskRecorder(
            nc, config.runtime.history, component="embed_worker", worker_id=self.runtime.worker_id
        )
        self.consumers = {name: self._consumer(name) for name in self.models}
        self._stack = AsyncExitStack()

    def _consumer(self, name: str) -> JobConsumer[EmbedRequest]:
        state = self.states[name]

        def count(in_flight: int) -> None:
            state.in_flight = in_flight

        return JobConsumer(
            self.runtime.nc, EMBED, EmbedHandler(name, state, self.batchers[name]), queue=name,
            worker_id=self.runtime.worker_id, settings=self.config.runtime.embed,
            cancellations=self.cancellations, recorder=self.recorder, capacity=lambda: state.capacity,
            ready=lambda: state.status is ModelStatus.READY, on_count=count,
        )  # fmt: skip

    @property
    def worker_id(self) -> str:
        return self.runtime.worker_id

    def stats(self) -> dict[str, Any]:
        """This worker's part of ``$SRV.STATS``: each model's batching, and the history recorder."""
        return {
            "embed": {name: msgspec.to_builtins(b.stats) for name, b in self.batchers.items()},
            "history": self.recorder.stats(),
        }

    async def _keep_ready(self, name: str) -> None:
        """Bring the model to ready; each time its engine stops serving, report it and do so again."""
        embedder, params, state = self.embedders[name], self.models[name].params, self.states[name]
        while True:
            await keep_ready(embedder, initial_backoff=params.recheck_initial, max_backoff=params.recheck_max)
            lost = await embedder.watch()
            state.set_error(lost.error, lost.message)

    async def _drain(self) -> None:
        running = await drain(self.consumers.values(), self.runtime, grace=self.config.runtime.shutdown_grace)
        log.info("embed_worker.drained", timed_out=running > 0, still_running=running)

    async def __aenter__(self) -> EmbedWorker:
        async with AsyncExitStack() as stack:
            for embedder in self.embedders.values():
                stack.push_async_callback(embedder.aclose)
            await stack.enter_async_context(self.runtime)
            await self.recorder.prepare()
            await self.cancellations.subscribe(self.runtime.nc)
            stack.push_async_callback(self.cancellations.unsubscribe)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            stack.push_async_callback(self._drain)
            for name in self.models:
                tg.start_soon(self._keep_ready, name, name=f"keep_ready:{name}")
                await tg.start(self.batchers[name].run, name=f"batcher:{name}")
                await tg.start(self.consumers[name].run, name=f"embed:{name}")
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)
