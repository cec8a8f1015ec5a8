"""Models served by any OpenAI-compatible HTTP server (OpenAI itself, vLLM, llama.cpp server, ...)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import msgspec

from services.config import ModelConfig
from services.runtime.worker import ModelState
from workers.model.providers.base import ChatCall, CheckFailed, Emit, ProviderError
from workers.model.providers.errors import (
    classify_status,
    classify_transport,
    upstream_error,
    upstream_message,
)
from workers.model.providers.usage import UsageCounter, usage_chunk

__all__ = ("OpenAIProvider",)

_encoder = msgspec.json.Encoder()
_JSON = {"content-type": "application/json"}


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _ChunkView(msgspec.Struct):
    """The few fields of a stream chunk modelbus looks at (the chunk itself is passed on untouched)."""

    id: str = ""
    model: str = ""
    created: int = 0
    choices: list[_Choice] = []
    usage: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(_ChunkView)


class OpenAIProvider:
    def __init__(
        self, model: ModelConfig, state: ModelState, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.model = model
        self.state = state
        params = model.params
        api_key = params.api_key or params.openai_api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.endpoint = params.endpoint.rstrip("/")
        self._client = client or httpx.AsyncClient(
            base_url=self.endpoint + "/",
            headers=headers,
            timeout=httpx.Timeout(params.check_timeout),
            limits=httpx.Limits(
                max_connections=state.capacity + 2, max_keepalive_connections=state.capacity + 2
            ),
        )

    async def check(self) -> None:
        """A minimal real request (one completion token) that proves endpoint, key and model name."""
        probe = {
            "model": self.model.provider_model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_completion_tokens": 1,
        }
        try:
            response = await self._client.post("chat/completions", json=probe)
        except httpx.TransportError as exc:
            raise CheckFailed(
                classify_transport(exc), f"{type(exc).__name__} calling {self.endpoint}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise CheckFailed(classify_status(response.status_code), upstream_message(response))

    def _request(self, call: ChatCall, *, stream: bool) -> httpx.Request:
        body = {**call.body, "model": self.model.provider_model, "stream": stream}
        if stream and call.include_usage:
            body["stream_options"] = {"include_usage": True}
        elif not stream:
            body.pop("stream_options", None)
        timeout = httpx.Timeout(
            max(0.001, call.deadline - time.time()), connect=self.model.params.check_timeout
        )
        return self._client.build_request(
            "POST",
            "chat/completions",
            content=_encoder.encode(body),
            headers=_JSON,
            extensions={"timeout": timeout.as_dict()},
        )

    async def complete(self, call: ChatCall) -> bytes:
        try:
            response = await self._client.send(self._request(call, stream=False))
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.endpoint) from exc
        if response.status_code >= 400:
            raise upstream_error(response)
        return response.content

    async def stream(self, call: ChatCall, emit: Emit) -> None:
        counter = UsageCounter(call.body)
        saw_usage = False
        last = _ChunkView()
        try:
            response = await self._client.send(self._request(call, stream=True), stream=True)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.endpoint) from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                raise upstream_error(response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = data.encode()
                try:
                    last = _chunk_decoder.decode(chunk)
                except msgspec.DecodeError as exc:
                    raise ProviderError(502, f"the upstream sent a malformed stream chunk: {exc}") from exc
                saw_usage = saw_usage or last.usage is not None
                counter.completion_tokens += sum(1 for c in last.choices if c.delta and c.delta.content)
                await emit(chunk)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.endpoint) from exc
        finally:
            await response.aclose()
        if call.include_usage and not saw_usage:
            await emit(
                usage_chunk(last.id, last.model or self.model.provider_model, counter.usage(), last.created)
            )

    async def aclose(self) -> None:
        await self._client.aclose()


def _transport_error(exc: httpx.TransportError, endpoint: str) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(504, f"the upstream model at {endpoint} did not answer in time", code="timeout")
    return ProviderError(502, f"cannot reach the upstream model at {endpoint}: {type(exc).__name__}")
