"""Helpers for the ingress tests: configs, views put straight into the KV bucket, a running ingress."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
import httpx
import msgspec
from nats.aio.client import Client
from nats.js.kv import KeyValue

from modelbus.config import AuthSettings, Config, HttpSettings, ModelConfig, RuntimeSettings
from modelbus.ingress.server import IngressServer
from modelbus.runtime.jetstream import model_views
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.schemas.subjects import encode_token
from modelbus.schemas.views import ModelView

T = TypeVar("T")

QWEN = ModelView(
    id="qwen2.5-coder",
    owned_by="local:qwen2.5-coder-0.5b-instruct",
    status=ModelStatus.READY,
    datasets=("sales", "orders"),
    supports_responses_api=True,
    created=1_700_000_000,
    ever_ready=True,
)
GPT = ModelView(
    id="gpt-4o-mini",
    owned_by="openai:gpt-4o-mini",
    status=ModelStatus.ERROR,
    error=ErrorInfo.of(ErrorCategory.MODEL, ErrorType.AUTH),
    error_message='Invalid API key, "sk-***" rejected\nby upstream',
    created=1_700_000_100,
    ever_ready=True,
)
LLAMA = ModelView(
    id="org/llama-3.1",
    owned_by="openai:meta/llama-3.1-8b",
    status=ModelStatus.LOADING,
    datasets=("events",),
    created=1_700_000_200,
    ever_ready=True,
)
VIEWS = (QWEN, GPT, LLAMA)
SORTED_IDS = ["gpt-4o-mini", "org/llama-3.1", "qwen2.5-coder"]


def ingress_config(*api_keys: str) -> Config:
    """An ingress's configuration with one model, so that it waits for the registry's first view."""
    return Config(
        runtime=RuntimeSettings(
            http=HttpSettings(host="127.0.0.1", port=0),
            auth=AuthSettings(api_keys=api_keys),
            shutdown_grace=2.0,
        ),
        models=(ModelConfig(name="qwen2.5-coder", from_="local:qwen2.5-coder-0.5b-instruct"),),
    )


async def views_bucket(nc: Client) -> KeyValue:
    return await model_views(nc.jetstream())


async def put_view(kv: KeyValue, view: ModelView) -> None:
    await kv.put(encode_token(view.id), msgspec.json.encode(view))


async def eventually(check: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy (the bound only stops a broken test from hanging)."""
    with anyio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(0.02)


@dataclass
class Running:
    server: IngressServer
    http: httpx.AsyncClient

    @property
    def base_url(self) -> str:
        return self.server.url


@asynccontextmanager
async def running_ingress(nc: Client, *api_keys: str) -> AsyncIterator[Running]:
    async with (
        IngressServer(ingress_config(*api_keys), nc) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        yield Running(server, http)


async def listed_ids(http: httpx.AsyncClient, **headers: str) -> list[str] | None:
    response = await http.get("/v1/models", headers=headers)
    if response.status_code != 200:
        return None
    return [entry["id"] for entry in response.json()["data"]]
