"""The whole system in one test process: registry, model workers, NSQL worker and ingress, each on its own
connection."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
from nats.aio.client import Client

from modelbus.config import Config, parse_config
from modelbus.ingress.server import IngressServer
from modelbus.registry import Registry
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.nats_client import connected
from modelbus.workers.model.worker import ModelWorker
from modelbus.workers.nsql.worker import NsqlWorker

FAST_RUNTIME = """
runtime:
  heartbeat: {interval: 0.2, ttl_intervals: 5}
  shutdown_grace: 3
  nats: {drain_timeout: 2}
  chat: {ack_wait: 1.0, keepalive: 0.25, request_timeout: 30}
"""


def stand_in_config(
    endpoint: str, *, extra_runtime: str = "", model_params: str = "", models: int = 1
) -> Config:
    """A configuration whose models are served by the stand-in upstream at ``endpoint``."""
    text = FAST_RUNTIME + extra_runtime + "models:\n"
    for i in range(models):
        name = "gpt-4.1" if i == 0 else f"gpt-4.1-{i}"
        text += (
            f"  - name: {name}\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05, recheck_max: 0.2"
            f"{', ' + model_params if model_params else ''}}}\n"
        )
    return parse_config(text, {})


@dataclass
class Stack:
    config: Config
    nats_url: str
    ingress: IngressServer
    workers: list[ModelWorker] = field(default_factory=list)
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)
    nsql: NsqlWorker | None = None

    @property
    def base_url(self) -> str:
        return self.ingress.url

    def client(self, api_key: str = "sk-none", **kwargs: object) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, **kwargs)  # type: ignore[arg-type]
        self.clients.append(client)  # closed when the stack stops
        return client

    async def wait_ready(self, model: str = "gpt-4.1", timeout: float = 30) -> None:
        await self.wait_status(model, "ready", timeout=timeout)

    async def wait_status(self, model: str, status: str, *, timeout: float = 30) -> dict[str, Any]:
        """Poll ``/v1/models/<model>?status=true`` until it reads ``status``; that view."""
        keys = self.config.runtime.auth.api_keys
        headers = {"X-API-Key": keys[0]} if keys else None
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers) as http:
            with anyio.fail_after(timeout):
                while True:
                    response = await http.get(f"/v1/models/{model}", params={"status": "true"})
                    if response.status_code == 200 and response.json().get("status") == status:
                        view: dict[str, Any] = response.json()
                        return view
                    await anyio.sleep(0.05)


@asynccontextmanager
async def running_stack(
    nats_url: str,
    config: Config,
    *,
    workers: int = 1,
    models: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    hosted = [m for m in config.models if models is None or m.name in models]
    async with AsyncExitStack() as stack:
        registry_nc = await stack.enter_async_context(
            connected(config.runtime.nats, nats_url, name="registry")
        )
        await stack.enter_async_context(Registry(registry_nc, config))
        started: list[ModelWorker] = []
        for i in range(workers):
            nc = await stack.enter_async_context(connected(config.runtime.nats, nats_url, name=f"worker-{i}"))
            worker = ModelWorker(nc, config, hosted, environ=environ if environ is not None else os.environ)
            started.append(await stack.enter_async_context(worker))
        ingress_nc = await stack.enter_async_context(connected(config.runtime.nats, nats_url, name="ingress"))
        ingress = await stack.enter_async_context(IngressServer(config, ingress_nc, port=0))
        running = Stack(config, nats_url, ingress, started)
        try:
            yield running
        finally:
            for client in running.clients:
                await client.close()


@asynccontextmanager
async def nsql_stack(
    nats_url: str,
    config: Config,
    engine: ClickHouse | None,
    config_dir: Path,
    *,
    keep_history: bool | None = None,
) -> AsyncIterator[Stack]:
    """Registry, a model worker for every model, an NSQL worker on ``engine`` (none without one) and the
    ingress, each on its own connection; entered once the first model is ready."""
    async with AsyncExitStack() as stack:

        async def connection(name: str) -> Client:
            return await stack.enter_async_context(connected(config.runtime.nats, nats_url, name=name))

        await stack.enter_async_context(Registry(await connection("registry"), config))
        worker = ModelWorker(await connection("model"), config, config.models, environ=os.environ)
        await stack.enter_async_context(worker)
        nsql: NsqlWorker | None = None
        if engine is not None:
            nsql = NsqlWorker(
                await connection("nsql"),
                config,
                config_dir=config_dir,
                engine=engine,
                keep_history=keep_history,
            )
            await stack.enter_async_context(nsql)
        ingress = await stack.enter_async_context(IngressServer(config, await connection("ingress"), port=0))
        running = Stack(config, nats_url, ingress, [worker], nsql=nsql)
        try:
            await running.wait_ready(config.models[0].name, timeout=120)
            yield running
        finally:
            for client in running.clients:
                await client.close()


async def srv_stats(nc: Client, service: str) -> dict[str, Any]:
    """The ``data`` of ``$SRV.STATS.<service>`` (every endpoint carries the same; one instance runs)."""
    reply = await nc.request(f"$SRV.STATS.{service}", b"", timeout=2)
    data: dict[str, Any] = json.loads(reply.data)["endpoints"][0]["data"]
    return data
