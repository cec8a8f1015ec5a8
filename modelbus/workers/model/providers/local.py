"""Local models: a GGUF file verified by hash, served by llama.cpp's own ``llama-server`` in a child process.

One child per model, on a private Unix socket, with ``parallel`` slots that llama.cpp batches together
(continuous batching); the worker's capacity is that slot count. Requests reach it through the same HTTP
code as the ``openai`` provider, so streaming, tools, ``response_format`` (json_schema becomes llama.cpp's
grammar), stop, seed, usage and cancellation (a closed connection frees the slot) behave the same.

The model is ``ready`` once the child answers ``/health`` and a real one-token completion. If the child
dies, :meth:`LocalProvider.watch` returns at once, the worker reports the model ``error`` and checks it
again, which starts a new child; children that die young are restarted with a growing delay.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import structlog

from modelbus.config import ModelConfig
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType
from modelbus.workers.model.catalog import model_cache_dir, resolve_model_file, verify
from modelbus.workers.model.engine.build import find_llama_server, usable_cores
from modelbus.workers.model.engine.process import BASE_URL, EngineExited, LlamaServerProcess, describe_exit
from modelbus.workers.model.providers.base import ChatCall, CheckFailed, Emit, ProviderError
from modelbus.workers.model.providers.openai_compat import OpenAIProvider
from modelbus.workers.model.providers.tool_calls import constrain_tool_choice, offered_tools, parse_tool_calls
from modelbus.workers.model.providers.usage import completion_as_stream
from modelbus.workers.model.state import ModelState

__all__ = ("LocalProvider", "llama_server_args")

log = structlog.get_logger(__name__)

LOADING = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.LOADING)
CRASHED = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.INTERNAL)
YOUNG = 60.0  # a child that dies sooner than this after it was ready makes the next start wait
MAX_RESTART_DELAY = 30.0
PROMPT_CACHE_MIB = 1024
_encoder = msgspec.json.Encoder()


def llama_server_args(model: ModelConfig, path: Path, *, threads: int) -> list[str]:
    """llama-server's flags for ``model`` (``--host`` is added by the process: its private socket)."""
    params = model.params
    return [
        "--model", str(path),
        "--alias", model.name,  # the `model` of every answer
        "--parallel", str(params.parallel),
        "--ctx-size", str(params.parallel * params.n_ctx),  # shared by the slots: n_ctx each
        "--threads", str(threads),
        "--jinja",  # the GGUF's own chat template, tool calls included
        "--no-webui",
        # idle slots' prompts kept in RAM for reuse: llama-server's default is 8 GiB, a leak to an operator
        "--cache-ram", str(PROMPT_CACHE_MIB),
        *params.llama_server_args,  # after modelbus's own: a flag given again there wins
    ]  # fmt: skip


class LocalProvider:
    """Starts llama-server for one model, keeps it supervised, and sends it the model's requests."""

    def __init__(self, model: ModelConfig, state: ModelState, *, environ: Mapping[str, str]) -> None:
        self.model = model
        self.state = state
        self._environ = dict(environ)
        self._cache_dir = model_cache_dir(environ)
        self.server: LlamaServerProcess | None = None
        self._http: OpenAIProvider | None = None
        self._spawned = anyio.Event()  # set (and replaced) each time a child is started
        self._young_deaths = 0
        self._closed = False

    @property
    def threads(self) -> int:
        return self.model.params.n_threads or usable_cores()

    async def check(self) -> None:
        server = self.server
        if server is not None and server.ready and server.returncode is None:
            return
        path = await self._model_file()
        binary = find_llama_server(self._environ)
        if binary is None:
            raise CheckFailed(
                LOADING, "llama-server is not built; run `modelbus engine build` (./run up does it) or set "
                "MODELBUS_LLAMA_SERVER to a llama-server binary",
            )  # fmt: skip
        await self._stop_server()
        await self._restart_delay()
        server = LlamaServerProcess(binary, llama_server_args(self.model, path, threads=self.threads),
                                    name=self.model.name)  # fmt: skip
        http = OpenAIProvider(
            self.model, self.state, endpoint=f"{BASE_URL}/v1", unix_socket=server.socket,
            upstream_model=self.model.name, where=f"the llama-server of {self.model.name}",
            # llama-server drops a kept-alive connection after a streamed answer without saying so, and the
            # next request sent on it fails (measured: 1 in 7); a Unix socket connection costs nothing
            reuse_connections=False,
        )  # fmt: skip
        self.server, self._http = server, http
        try:
            await server.start()
        except OSError as exc:
            raise CheckFailed(LOADING, f"cannot start {binary}: {exc}") from exc
        self._spawned.set()
        self._spawned = anyio.Event()
        await self._until_serving(server, http)

    async def _until_serving(self, server: LlamaServerProcess, http: OpenAIProvider) -> None:
        """Wait for the health check, then one real completion token; a failure stops the child."""
        try:
            await server.wait_healthy(http.session(), timeout=self.model.params.load_timeout)
            await http.check()
        except (EngineExited, TimeoutError, CheckFailed) as exc:
            reason = exc.message if isinstance(exc, CheckFailed) else str(exc) or "no health in time"
            await self._stop_server()
            raise CheckFailed(LOADING, f"llama-server did not serve {self.model.name}: {reason}; "
                              f"its last output: {server.last_lines()}") from exc  # fmt: skip
        server.ready = True
        server.ready_at = time.monotonic()
        log.info("llama_server.ready", model=self.model.name, pid=server.pid, slots=self.state.capacity)

    async def _model_file(self) -> Path:
        try:
            resolved = resolve_model_file(
                self.model.provider_model, sha256=self.model.params.sha256, cache_dir=self._cache_dir
            )
        except ValueError as exc:
            raise CheckFailed(LOADING, str(exc), retryable=False) from exc
        path = resolved.path
        if not path.is_file():
            raise CheckFailed(LOADING, f"model file {path} not found; run `modelbus models pull`")
        if resolved.sha256 and not await anyio.to_thread.run_sync(verify, path, resolved.sha256):
            raise CheckFailed(
                LOADING, f"model file {path} does not have sha256 {resolved.sha256}; pull it again"
            )
        return path

    async def _restart_delay(self) -> None:
        if self._young_deaths:
            delay = min(2.0 ** (self._young_deaths - 1), MAX_RESTART_DELAY)
            log.info("llama_server.restart_delayed", model=self.model.name, in_s=delay)
            await anyio.sleep(delay)

    async def watch(self) -> CheckFailed:
        """Follow each child (its output, its exit); return when one that was serving has died."""
        while True:
            spawned, server = self._spawned, self.server
            if server is None or server.watched:
                await spawned.wait()
                continue
            server.watched = True
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.drain_output)
                code = await server.wait()
            if server.ready and server is self.server and not self._closed:
                lived = time.monotonic() - server.ready_at
                self._young_deaths = self._young_deaths + 1 if lived < YOUNG else 0
                message = f"llama-server {describe_exit(code)}; restarting it. Its last output: "
                log.warning("llama_server.died", model=self.model.name, pid=server.pid, code=code)
                return CheckFailed(CRASHED, message + server.last_lines())

    def _serving(self) -> OpenAIProvider:
        server, http = self.server, self._http
        if server is None or http is None or not server.ready or server.returncode is not None:
            raise ProviderError(503, f"model {self.model.name} is not loaded", code="model_not_ready")
        return http

    async def _with_tools(self, call: ChatCall, offered: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The whole completion of a request that offers tools, its tool calls parsed out of the text."""
        constrained = msgspec.structs.replace(call, body=constrain_tool_choice(call.body))
        result: dict[str, Any] = msgspec.json.decode(await self._serving().complete(constrained))
        for choice in result.get("choices") or []:
            parse_tool_calls(choice, offered)
        return result

    async def complete(self, call: ChatCall) -> bytes:
        offered = offered_tools(call.body)
        if not offered:
            return await self._serving().complete(call)
        return _encoder.encode(await self._with_tools(call, offered))

    async def stream(self, call: ChatCall, emit: Emit) -> None:
        offered = offered_tools(call.body)
        if not offered:
            await self._serving().stream(call, emit)
            return
        # a tool call is known only once the whole answer is there: generate it, then stream it as deltas
        result = await self._with_tools(call, offered)
        for chunk in completion_as_stream(result, include_usage=call.include_usage, model=self.model.name):
            await emit(chunk)

    async def _stop_server(self) -> None:
        server, http = self.server, self._http
        if http is not None:
            await http.aclose()
        if server is not None:
            await server.stop()

    async def slots(self) -> list[dict[str, object]]:
        """llama-server's own slot state (``GET /slots``): which slots are processing a request."""
        http = self._serving()
        async with http.session().get(f"{BASE_URL}/slots") as response:
            if response.status != 200:
                raise ProviderError(502, f"llama-server answered /slots with {response.status}")
            found: list[dict[str, object]] = await response.json()
            return found

    async def aclose(self) -> None:
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._stop_server()
