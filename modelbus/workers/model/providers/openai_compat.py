"""Models served by any OpenAI-compatible HTTP server (OpenAI itself, vLLM, llama.cpp server, ...).

The HTTP client is aiohttp: on this path it spends a fraction of the CPU per request that httpx does
(docs/benchmarks.md), and a model worker's throughput is that CPU.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec

from modelbus.config import ModelConfig
from modelbus.workers.model.providers.base import ChatCall, CheckFailed, Emit, ProviderError
from modelbus.workers.model.providers.errors import (
    UpstreamResponse,
    stream_error,
    transport_error,
    upstream_error,
)
from modelbus.workers.model.providers.upstream_http import post_answer, probe, upstream_session
from modelbus.workers.model.providers.usage import UsageCounter, usage_chunk
from modelbus.workers.model.state import ModelState

__all__ = ("OpenAIProvider",)

_encoder = msgspec.json.Encoder()
_DATA = b"data:"
_ERROR_EVENT = b"error:"  # how older llama-server builds send an error inside a stream
_DONE = b"[DONE]"
MAX_LINE_BYTES = 16 * 1024 * 1024  # one stream event (a line) from the upstream, at most


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
    error: msgspec.Raw = msgspec.Raw()  # ``data: {"error": {...}}``: the upstream failed mid-stream


_chunk_decoder = msgspec.json.Decoder(_ChunkView)


class OpenAIProvider:
    """Chat over OpenAI's HTTP API; ``unix_socket`` reaches a server on a Unix socket (llama-server)."""

    def __init__(
        self,
        model: ModelConfig,
        state: ModelState,
        *,
        endpoint: str | None = None,
        unix_socket: Path | None = None,
        upstream_model: str | None = None,
        where: str | None = None,
        reuse_connections: bool = True,
    ) -> None:
        self.model = model
        self.state = state
        params = model.params
        api_key = params.api_key or params.openai_api_key
        self._api_key = api_key or None  # masked out of upstream error messages
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        if params.openai_org_id:
            self._headers["OpenAI-Organization"] = params.openai_org_id
        if params.openai_project_id:
            self._headers["OpenAI-Project"] = params.openai_project_id
        self.endpoint = (endpoint or params.endpoint).rstrip("/")
        self.where = where or self.endpoint  # how error messages name the server
        self.upstream_model = upstream_model or model.provider_model
        self._unix_socket = unix_socket
        self._reuse = reuse_connections
        self._url = f"{self.endpoint}/chat/completions"
        self._responses_url = f"{self.endpoint}/responses"
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session, created on first use (inside the running event loop)."""
        if self._session is None:
            limit = self.state.capacity + 2
            reuse = {"keepalive_timeout": 30} if self._reuse else {"force_close": True}
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=str(self._unix_socket), limit=limit, **reuse)
                if self._unix_socket is not None
                else aiohttp.TCPConnector(limit=limit, **reuse)
            )
            self._session = upstream_session(connector, self._headers)
        return self._session

    async def check(self) -> None:
        """A minimal real request (one completion token) that proves endpoint, key and model name."""
        body = {
            "model": self.upstream_model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_completion_tokens": 1,
        }
        await probe(
            self.session(), self._url, _encoder.encode(body), timeout=self.model.params.check_timeout,
            where=self.where, secret=self._api_key,
        )  # fmt: skip

    def _request(
        self, call: ChatCall, *, stream: bool, url: str | None
    ) -> tuple[bytes, aiohttp.ClientTimeout]:
        """The body to send for ``call`` (the upstream's model name, ``stream``), and its timeout."""
        body = {**call.body, "model": self.upstream_model, "stream": stream}
        if stream and call.include_usage and url is None:
            body["stream_options"] = {"include_usage": True}
        elif not stream:
            body.pop("stream_options", None)
        remaining = max(0.001, call.deadline - time.time()) if call.deadline else None  # 0: no deadline
        return _encoder.encode(body), aiohttp.ClientTimeout(
            total=remaining, sock_connect=self.model.params.check_timeout
        )

    def _post(self, call: ChatCall, *, stream: bool, url: str | None = None) -> Any:
        data, timeout = self._request(call, stream=stream, url=url)
        return self.session().post(url or self._url, data=data, timeout=timeout)

    async def respond(self, call: ChatCall) -> bytes:
        """A Responses API request passed through to an upstream that serves ``/responses`` itself."""
        return await self._answer(call, self._responses_url)

    async def respond_stream(self, call: ChatCall, emit: Emit) -> None:
        """The upstream's Responses API events, each ``data:`` JSON passed to ``emit`` as it is."""
        try:
            async with self._post(call, stream=True, url=self._responses_url) as response:
                if response.status >= 400:
                    raise upstream_error(
                        UpstreamResponse(response.status, await response.read()), self._api_key
                    )
                async for raw_line in _lines(response.content):
                    line = raw_line.strip()
                    if line.startswith(_DATA) and line[len(_DATA) :].strip() != _DONE:
                        await emit(line[len(_DATA) :].strip())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, self.where) from exc

    async def complete(self, call: ChatCall) -> bytes:
        return await self._answer(call, self._url)

    async def _answer(self, call: ChatCall, url: str) -> bytes:
        """A plain (non-streaming) answer's body from ``url``; a failure classified as every one is."""
        data, timeout = self._request(call, stream=False, url=url)
        return await post_answer(
            self.session(), url, data, timeout=timeout, where=self.where, secret=self._api_key
        )

    async def stream(self, call: ChatCall, emit: Emit) -> None:
        counter = UsageCounter(call.body)
        saw_usage = False
        last = _ChunkView()
        try:
            async with self._post(call, stream=True) as response:
                if response.status >= 400:
                    raise upstream_error(
                        UpstreamResponse(response.status, await response.read()), self._api_key
                    )
                async for raw_line in _lines(response.content):
                    line = raw_line.strip()
                    if line.startswith(_ERROR_EVENT):
                        raise stream_error(line[len(_ERROR_EVENT) :].strip(), self._api_key)
                    if not line.startswith(_DATA):
                        continue
                    chunk = line[len(_DATA) :].strip()
                    if chunk == _DONE:
                        break
                    try:
                        last = _chunk_decoder.decode(chunk)
                    except msgspec.DecodeError as exc:
                        raise ProviderError(
                            502, f"the upstream sent a malformed stream chunk: {exc}"
                        ) from exc
                    if last.error and bytes(last.error) != b"null":
                        raise stream_error(bytes(last.error), self._api_key)
                    saw_usage = saw_usage or last.usage is not None
                    counter.completion_tokens += sum(1 for c in last.choices if c.delta and c.delta.content)
                    await emit(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, self.where) from exc
        if call.include_usage and not saw_usage:
            model = last.model or self.upstream_model
            await emit(usage_chunk(last.id, model, counter.usage(), last.created))

    async def watch(self) -> CheckFailed:
        """A remote model is probed again only when a request shows it cannot serve: nothing to watch."""
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's lines, from whatever has arrived at each read (aiohttp's own line iteration searches and
    copies its buffer once per line: several times the cost, for a stream of small events)."""
    rest = b""
    async for data in content.iter_any():
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            yield line
        if len(rest) > MAX_LINE_BYTES:
            raise ProviderError(502, f"the upstream sent a stream line over {MAX_LINE_BYTES} bytes")
    if rest:
        yield rest
