"""What every worker shares: discoverability (``$SRV.PING/INFO/STATS``), heartbeats, and a goodbye.

A worker owns one :class:`HostedModel` per model it hosts (the model worker's ``ModelState``) and changes
it as the model loads, fails or recovers; :class:`WorkerRuntime` publishes a heartbeat for every model
each interval, and at once after a change, and a :class:`~modelbus.schemas.heartbeat.Goodbye` for each
on exit.

``$SRV.STATS`` answers, in each endpoint's ``data``, ``{"worker_id", "models": {model: counters}}`` plus
whatever the worker's ``extra_stats`` adds (the NSQL worker's ``nsql`` counters). A model's counters:
``status``, ``capacity``, ``in_flight``, ``requests`` and ``failures`` (requests taken, and those that
ended in an error), ``prompt_tokens`` and ``completion_tokens`` (from the usage of the answers that carry
one: every plain answer, and streams asked with ``include_usage``), ``busy_seconds`` (time spent answering,
summed over requests).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import anyio
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from modelbus.config import HeartbeatSettings
from modelbus.runtime.version import package_version
from modelbus.schemas.heartbeat import Goodbye, Heartbeat, ModelInfo
from modelbus.schemas.status import ErrorInfo, ModelStatus
from modelbus.schemas.subjects import PREFIX, encode_token, heartbeat_subject

__all__ = ("HostedModel", "WorkerRuntime", "new_worker_id")

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()


def new_worker_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class HostedModel(Protocol):
    """What a worker reports of one model it hosts (the model worker's ``ModelState``)."""

    model: str
    info: ModelInfo
    status: ModelStatus
    error: ErrorInfo | None
    error_message: str | None
    capacity: int
    in_flight: int

    def counters(self) -> dict[str, Any]:
        """The model's counters in ``$SRV.STATS`` (see the module docstring)."""
        ...

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` whenever the status changes (the heartbeat then goes out at once)."""
        ...


class WorkerRuntime:
    """An async context manager that makes a worker visible on the bus while it is entered."""

    def __init__(
        self,
        nc: Client,
        *,
        kind: str,
        models: Sequence[HostedModel],
        heartbeat: HeartbeatSettings,
        worker_id: str | None = None,
        description: str = "",
        extra_stats: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.nc = nc
        self.kind = kind
        self.worker_id = worker_id or new_worker_id(kind)
        self.models = list(models)
        self._settings = heartbeat
        self._wake = anyio.Event()
        self._seq = 0
        self._service: Service | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._description = description
        self._extra_stats = extra_stats
        self._said_goodbye = False
        self._beat_scope = anyio.CancelScope()
        for state in self.models:
            state.watch(self.changed)

    def changed(self) -> None:
        """Send a heartbeat now rather than at the next tick."""
        self._wake.set()

    def heartbeats(self) -> list[Heartbeat]:
        self._seq += 1
        now = time.time()
        return [
            Heartbeat(
                worker_id=self.worker_id,
                model=s.model,
                kind=self.kind,
                status=s.status,
                info=s.info,
                error=s.error,
                error_message=s.error_message,
                capacity=s.capacity,
                in_flight=s.in_flight,
                version=package_version(),
                interval_s=self._settings.interval,
                seq=self._seq,
                sent_at=now,
            )
            for s in self.models
        ]

    def stats(self) -> dict[str, Any]:
        """What ``$SRV.STATS`` reports in each endpoint's ``data`` (see the module docstring)."""
        extra = self._extra_stats() if self._extra_stats is not None else {}
        return {
            **extra,
            "worker_id": self.worker_id,
            "models": {s.model: s.counters() for s in self.models},
        }

    async def __aenter__(self) -> WorkerRuntime:
        self._service = await add_service(
            self.nc,
            name=f"modelbus-{self.kind}-worker",
            version=package_version(),
            description=self._description or f"modelbus {self.kind} worker",
            metadata={"worker_id": self.worker_id, "models": ",".join(s.model for s in self.models)},
            stats_handler=self._endpoint_stats,
        )
        await self._service.add_endpoint(
            name="status",
            subject=f"{PREFIX}.worker.{encode_token(self.worker_id)}.status",
            handler=self._handle_status,
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._beat)
        log.info(
            "worker.started", worker_id=self.worker_id, kind=self.kind, models=[s.model for s in self.models]
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.move_on_after(2, shield=True):
            await self.goodbye()
            if self._service is not None:
                await self._service.stop()
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)
        log.info("worker.stopped", worker_id=self.worker_id)

    def _endpoint_stats(self, _: EndpointStats) -> dict[str, Any]:
        return self.stats()

    async def _handle_status(self, request: Request) -> None:
        await request.respond(_encoder.encode(self.heartbeats()))

    async def _beat(self) -> None:
        with self._beat_scope:
            while True:
                self._wake = anyio.Event()
                try:
                    await self._publish_heartbeats()
                except nats.errors.Error as exc:  # a reconnect in progress: the next beat will do
                    log.warning("worker.heartbeat_failed", error=type(exc).__name__)
                with anyio.move_on_after(self._settings.interval):
                    await self._wake.wait()

    async def _publish_heartbeats(self) -> None:
        if not self.nc.is_connected:
            return  # nats-py would buffer them; stale heartbeats after a reconnect help no one
        for beat in self.heartbeats():
            await self.nc.publish(heartbeat_subject(beat.model, self.worker_id), _encoder.encode(beat))

    async def goodbye(self) -> None:
        """Stop the heartbeats and tell the registry this worker is leaving (done once, also on exit)."""
        if self._said_goodbye:
            return
        self._said_goodbye = True
        self._beat_scope.cancel()
        if self.nc.is_closed:
            return
        for state in self.models:
            bye = Goodbye(worker_id=self.worker_id, model=state.model)
            await self.nc.publish(heartbeat_subject(state.model, self.worker_id), _encoder.encode(bye))
        await self.nc.flush(timeout=1)
