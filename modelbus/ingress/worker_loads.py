"""Each worker's load, as its ``$SRV.STATS`` reports it: one request to every modelbus worker at once.

The workers are NATS micro services named ``modelbus-<kind>-worker``; ``$SRV.STATS`` with no name reaches
every service, and each answers once. The answers are gathered for ``window`` seconds (a worker that has
not answered by then is left out of this look, not waited for), so one look costs one round trip and a
short wait however many workers there are. Each endpoint's ``data`` is what ``WorkerRuntime.stats`` made.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from modelbus.schemas.dashboard import NsqlLoad, WorkerLoad, WorkerModelLoad, WorkersView

__all__ = ("WorkerLoads", "worker_load")

log = structlog.get_logger(__name__)
_PREFIX, _SUFFIX = "modelbus-", "-worker"
_MAX_WORKERS = 1000  # answers read per look (a bound on a misbehaving bus, far above any deployment)


class _Endpoint(msgspec.Struct):
    data: dict[str, Any] | None = None


class _Stats(msgspec.Struct):
    name: str = ""
    endpoints: list[_Endpoint] = []


_decoder = msgspec.json.Decoder(_Stats)


def worker_load(raw: bytes) -> WorkerLoad | None:
    """One ``$SRV.STATS`` answer as a worker's load; None for a service that is no modelbus worker."""
    try:
        stats = _decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    if not (stats.name.startswith(_PREFIX) and stats.name.endswith(_SUFFIX)) or not stats.endpoints:
        return None
    data = stats.endpoints[0].data or {}
    try:
        models = msgspec.convert(data.get("models") or {}, dict[str, WorkerModelLoad])
        nsql = msgspec.convert(data["nsql"], NsqlLoad) if "nsql" in data else None
        worker_id = str(data["worker_id"])
    except (msgspec.ValidationError, KeyError, TypeError):
        return None
    kind = stats.name[len(_PREFIX) : -len(_SUFFIX)]
    return WorkerLoad(worker_id=worker_id, kind=kind, models=models, nsql=nsql)


class WorkerLoads:
    def __init__(self, nc: Client, *, window: float = 0.3) -> None:
        self._nc = nc
        self._window = window

    async def view(self) -> WorkersView:
        found: dict[str, WorkerLoad] = {}

        async def collect(msg: Msg) -> None:
            load = worker_load(msg.data)
            if load is not None and len(found) < _MAX_WORKERS:
                found[load.worker_id] = load

        try:
            inbox = self._nc.new_inbox()
            sub = await self._nc.subscribe(inbox, cb=collect, max_msgs=_MAX_WORKERS)
            try:
                await self._nc.publish("$SRV.STATS", b"", reply=inbox)
                await anyio.sleep(self._window)
            finally:
                with anyio.move_on_after(1, shield=True):
                    await sub.unsubscribe()
        except nats.errors.Error as exc:  # no connection now: no workers seen in this look
            log.warning("ingress.worker_loads_failed", error=type(exc).__name__)
        return WorkersView(data=tuple(sorted(found.values(), key=lambda w: (w.kind, w.worker_id))))
