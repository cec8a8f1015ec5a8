"""``modelbus history``: the history sink as a service of its own.

With a ClickHouse server (``runtime.clickhouse.url``) run as many as you like: they share the consumer
``history`` and so the work, and write one table. With the embedded engine the NSQL worker normally keeps
the history itself (so NSQL can query it); run on its own, the service claims a data directory under
``<state_dir>/history`` and keeps a copy there.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType

import msgspec
from nats.aio.client import Client

from modelbus.config import Config
from modelbus.history.sink import HistorySink
from modelbus.history.summary import HistoryResponder
from modelbus.runtime.clickhouse.datadir import open_engine
from modelbus.runtime.clickhouse.engine import ClickHouse

__all__ = ("HistoryService", "embedded_sink")

SHARED_CONSUMER = "history"
_ID_FILE = "history-consumer"


def local_consumer_name(data_dir: Path) -> str:
    """The consumer of an embedded engine's own copy: named by an id kept in its data directory, so the copy
    resumes where it stopped after a restart, and a new directory starts from the beginning."""
    path = data_dir / _ID_FILE
    if not path.is_file():
        path.write_text(f"history-{uuid.uuid4().hex[:12]}\n")
    return path.read_text().strip()


def embedded_sink(nc: Client, engine: ClickHouse, config: Config, data_dir: Path) -> HistorySink:
    """A sink writing an embedded engine's own full copy of the history; its consumer is removed by the
    server once unused for the retention period (the directory is gone for good)."""
    settings = config.runtime.history
    return HistorySink(
        nc, engine, settings, consumer=local_consumer_name(data_dir), inactive_threshold=settings.retention
    )


class HistoryService:
    def __init__(self, nc: Client, config: Config, *, config_dir: Path) -> None:
        self.nc = nc
        self.config = config
        self.config_dir = config_dir
        self.sink: HistorySink | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> HistoryService:
        async with AsyncExitStack() as stack:
            runtime = self.config.runtime
            settings = msgspec.structs.replace(runtime.clickhouse, readers=1)  # it only writes
            base = (self.config_dir / runtime.state_dir / "history").resolve()
            engine, data_dir = await open_engine(stack, settings, base=base)
            if data_dir is not None:
                sink = embedded_sink(self.nc, engine, self.config, data_dir)
            else:
                sink = HistorySink(self.nc, engine, runtime.history, consumer=SHARED_CONSUMER)
            self.sink = await stack.enter_async_context(sink)
            await stack.enter_async_context(HistoryResponder(self.nc, engine, sink.table))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)
