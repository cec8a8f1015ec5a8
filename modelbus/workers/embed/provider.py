"""Embeddings from an OpenAI-compatible ``/embeddings`` endpoint (OpenAI itself, or any server speaking it).

One call embeds a batch of inputs; the answer's vectors come back in input order (by ``index``) with the
batch's ``prompt_tokens``. Failures are classified as chat's are
(:mod:`modelbus.workers.model.providers.errors`), so an embedding model's status and a client's error read the
same.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import anyio
import msgspec

from modelbus.config import EmbeddingConfig
from modelbus.workers.model.providers.base import CheckFailed
from modelbus.workers.model.providers.errors import (
    UpstreamResponse,
    upstream_error,
)
from modelbus.workers.model.providers.upstream_http import post_answer, probe, upstream_session
from modelbus.workers.model.state import ModelState

__all__ = ("Embedded", "OpenAIEmbedder")

_encoder = msgspec.json.Encoder()


class _Item(msgspec.Struct):
    index: int
    embedding: list[float]


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0


class _Answer(msgspec.Struct):
    data: list[_Item]
    usage: _Usage = _Usage()


_answer = msgspec.json.Decoder(_Answer)


class Embedded(msgspec.Struct, frozen=True):
    vectors: list[list[float]]
    prompt_tokens: int


class OpenAIEmbedder:
    def __init__(self, model: EmbeddingConfig, state: ModelState) -> None:
        self.model = model
        self.state = state
        params = model.params
        key = params.api_key or params.openai_api_key
        self._key = key or None
        self._headers = {
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {key}"} if key else {}),
        }
        self.endpoint = params.endpoint.rstrip("/")
        self._url = f"{self.endpoint}/embeddings"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.state.capacity + 2, keepalive_timeout=30)
            self._session = upstream_session(connector, self._headers)
        return self._session

    async def check(self) -> None:
        """One real embedding, proving the endpoint, the key and the model name."""
        body = {"model": self.model.provider_model, "input": ["ping"]}
        await probe(
            self._client(), self._url, _encoder.encode(body), timeout=self.model.params.check_timeout,
            where=self.endpoint, secret=self._key,
        )  # fmt: skip

    async def embed(
        self, inputs: list[Any], *, dimensions: int | None, user: str | None, deadline: float
    ) -> Embedded:
        body: dict[str, Any] = {
            "model": self.model.provider_model,
            "input": inputs,
            "encoding_format": "float",
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        if user is not None:
            body["user"] = user
        timeout = aiohttp.ClientTimeout(
            total=max(0.001, deadline - time.time()), sock_connect=self.model.params.check_timeout
        )
        data = await post_answer(
            self._client(), self._url, _encoder.encode(body), timeout=timeout, where=self.endpoint,
            secret=self._key,
        )  # fmt: skip
        try:
            answer = _answer.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise upstream_error(UpstreamResponse(502, data), self._key) from exc
        items = sorted(answer.data, key=lambda item: item.index)
        return Embedded(vectors=[item.embedding for item in items], prompt_tokens=answer.usage.prompt_tokens)

    async def watch(self) -> CheckFailed:
        """A remote model is checked again only when a request shows it cannot serve: nothing to watch."""
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
