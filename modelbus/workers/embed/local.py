"""A local embedding model: its engine's own OpenAI-compatible server as a child process, on loopback.

The engine comes from the catalog (:mod:`modelbus.workers.embed.catalog`: fetched and verified once per
user). The child is started like ``llama-server``
(:class:`~modelbus.workers.model.engine.process.EngineProcess`: it dies with the worker), on a free loopback
port, with every core this process may use; once its
``/health`` answers, requests go to it through :class:`~modelbus.workers.embed.provider.OpenAIEmbedder`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import msgspec

from modelbus.config import EmbeddingConfig
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType
from modelbus.workers.embed.catalog import EMBEDDING_CATALOG, EmbeddingEngine, fetch_engine
from modelbus.workers.embed.provider import Embedded, OpenAIEmbedder
from modelbus.workers.model.engine.build import usable_cores
from modelbus.workers.model.engine.process import EngineExited, EngineProcess, describe_exit
from modelbus.workers.model.fetching import FetchError
from modelbus.workers.model.providers.base import CheckFailed, ProviderError
from modelbus.workers.model.state import ModelState

__all__ = ("LocalEmbedder", "engine_argv")

LOAD_TIMEOUT_S = 60.0
LOADING = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.LOADING)
CRASHED = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.INTERNAL)
WATCH_RECHECK_S = 0.5  # while no engine runs (a check is starting one), look again this often


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_argv(entry: EmbeddingEngine, port: int) -> list[str]:
    """How the engine's own server is started: on loopback ``port``, with every core this process may use
    (its package on ``PYTHONPATH``)."""
    return [sys.executable, "-m", f"{entry.package}.server", "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(usable_cores())]  # fmt: skip


class LocalEmbedder:
    def __init__(self, model: EmbeddingConfig, state: ModelState, *, environ: Mapping[str, str]) -> None:
        self.model = model
        self.state = state
        self._environ = environ
        self._process: EngineProcess | None = None
        self._http: OpenAIEmbedder | None = None

    async def check(self) -> None:
        """Start the engine (fetching it first if needed) and embed once; raise CheckFailed if it cannot."""
        if self._http is not None and self._process is not None and self._process.returncode is None:
            await self._http.check()
            return
        await self._stop()
        entry = EMBEDDING_CATALOG.get(self.model.provider_model)
        if entry is None:
            known = ", ".join(sorted(EMBEDDING_CATALOG))
            raise CheckFailed(
                ErrorInfo.of(ErrorCategory.MODEL, ErrorType.NOT_FOUND),
                f"no local embedding model named `{self.model.provider_model}` (known: {known})",
                retryable=False,
            )
        try:
            directory = await anyio.to_thread.run_sync(fetch_engine, entry, self._environ)
        except (FetchError, OSError) as exc:
            raise CheckFailed(LOADING, f"fetching {entry.requirement}: {exc}") from exc
        port = _free_port()
        argv = engine_argv(entry, port)
        process = self._process = EngineProcess(
            argv, name=self.model.name, engine=entry.package, env={"PYTHONPATH": str(directory)}
        )
        await process.start()
        endpoint = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                await process.wait_healthy(session, timeout=LOAD_TIMEOUT_S, url=f"{endpoint}/health")
        except (EngineExited, TimeoutError) as exc:
            await self._stop()
            raise CheckFailed(LOADING, f"the {entry.package} engine did not start: {exc}") from exc
        params = msgspec.structs.replace(self.model.params, endpoint=f"{endpoint}/v1", api_key=None)
        self._http = OpenAIEmbedder(msgspec.structs.replace(self.model, params=params), self.state)
        await self._http.check()

    async def embed(
        self, inputs: list[Any], *, dimensions: int | None, user: str | None, deadline: float
    ) -> Embedded:
        if self._http is None:
            raise ProviderError(503, "the embedding engine is not running", code="model_not_ready")
        return await self._http.embed(inputs, dimensions=dimensions, user=user, deadline=deadline)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def watch(self) -> CheckFailed:
        """Wait until the running engine exits (it crashed, or was killed); why. The worker then reports the
        model ``error`` and checks it again, which starts a new engine."""
        while True:
            process = self._process
            if process is not None and process.process is not None and self._http is not None:
                code = await process.wait()
                if process is self._process:  # not already replaced by a new check
                    return CheckFailed(CRASHED, f"the {process.engine} engine {describe_exit(code)}")
            await anyio.sleep(WATCH_RECHECK_S)

    async def _stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        process, self._process = self._process, None
        if process is not None:
            await process.stop()

    async def aclose(self) -> None:
        await self._stop()
