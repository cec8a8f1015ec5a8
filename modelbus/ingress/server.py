"""``IngressServer``: the model view store and the Litestar app, served in-process by uvicorn.

The listening socket is bound on enter, so a port in use fails at once and ``port=0`` gets a free port that
:attr:`IngressServer.port` reports. Exit stops accepting, lets requests in flight finish within
``runtime.shutdown_grace`` seconds, then forces the rest closed; every task it started has ended when exit
returns. Signals are left to the process that owns the server (uvicorn's own handlers are not installed).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import structlog
import uvicorn
from nats.aio.client import Client

from modelbus.config import Config, QueueSettings
from modelbus.ingress.app import create_app
from modelbus.ingress.response_store import ResponseStore
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.jetstream import response_store
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.schemas.chat import CHAT
from modelbus.schemas.embeddings import EMBED
from modelbus.schemas.jobs import JobKind
from modelbus.schemas.nsql import NSQL

__all__ = ("IngressServer",)

log = structlog.get_logger(__name__)

_STARTUP_TIMEOUT_S = 10.0
_FORCE_EXIT_TIMEOUT_S = 2.0


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the owner of the process decides when the server stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int, *, shared: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and
    # with Nagle on, a response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:  # several ingress processes listen on one port; the kernel spreads connections among them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class IngressServer:
    """Serve the HTTP API on ``config.runtime.http`` (or ``host``/``port`` given here) while entered.

    ``nc`` is a connected client the caller owns (and closes after this exits). Use each instance once.
    """

    def __init__(
        self, config: Config, nc: Client, *, host: str | None = None, port: int | None = None
    ) -> None:
        self._config = config
        self._nc = nc
        self._host = host if host is not None else config.runtime.http.host
        self._requested_port = port if port is not None else config.runtime.http.port
        self._grace = config.runtime.shutdown_grace
        self._port: int | None = None
        self._views: ModelViewStore | None = None
        self._server: _EmbeddedUvicorn | None = None
        self._stopped = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the ingress is not serving")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def views(self) -> ModelViewStore:
        if self._views is None:
            raise RuntimeError("the ingress is not serving")
        return self._views

    async def __aenter__(self) -> IngressServer:
        async with AsyncExitStack() as stack:
            # first, so a busy port fails plainly and at once (unless ingress processes share it on purpose)
            shared = self._config.runtime.http.process_count > 1
            sock = _bind(self._host, self._requested_port, shared=shared)
            stack.callback(sock.close)
            self._port = int(sock.getsockname()[1])
            views = ModelViewStore(self._nc, expect_models=bool(self._config.models))
            self._views = await stack.enter_async_context(views)
            runtime = self._config.runtime
            queues: dict[JobKind[Any, Any], QueueSettings] = {
                CHAT: runtime.chat,
                NSQL: runtime.nsql,
                EMBED: runtime.embed,
            }
            self._client = await stack.enter_async_context(WorkQueueClient(self._nc, queues))
            recorder = TaskRecorder(
                self._nc, runtime.history, component="ingress", worker_id=self._client.client_id
            )
            responses = ResponseStore(await response_store(self._nc.jetstream(), keep=runtime.responses.keep))
            await recorder.prepare()
            self._server = _EmbeddedUvicorn(
                uvicorn.Config(
                    create_app(self._config, self._views, self._client, recorder, responses),
                    host=self._host,
                    port=self._port,
                    http="httptools",
                    ws="none",
                    lifespan="on",
                    access_log=False,
                    log_config=None,
                    server_header=False,
                    proxy_headers=False,  # nothing here reads the client address; a middleware saved
                    timeout_graceful_shutdown=max(1, int(self._grace)),
                )
            )
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            # On exit, callbacks run last-in first-out: stop uvicorn, then await its task, then the store.
            stack.push_async_callback(self._shutdown)
            self._tg.start_soon(self._serve, self._server, sock)
            await self._wait_started(self._server)
            self._stack = stack.pop_all()
        log.info("ingress.started", url=self.url, auth=bool(self._config.runtime.auth.api_keys))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
        log.info("ingress.stopped")

    async def _serve(self, server: _EmbeddedUvicorn, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits the process when the app's startup fails
            raise RuntimeError(f"the HTTP server could not start (uvicorn exit code {exc.code})") from None
        finally:
            self._stopped.set()

    async def _wait_started(self, server: _EmbeddedUvicorn) -> None:
        with anyio.fail_after(_STARTUP_TIMEOUT_S):
            while not server.started:
                if self._stopped.is_set():
                    raise RuntimeError("the HTTP server stopped during startup")
                await anyio.sleep(0.005)

    async def _shutdown(self) -> None:
        server = self._server
        if server is None:
            return
        if self._views is not None:
            self._views.close_listeners()  # open status streams end now, with `event: error` (shutting_down)
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._grace + 1):
                await self._stopped.wait()
            if not self._stopped.is_set():
                log.warning("ingress.force_exit", grace_s=self._grace)
                server.force_exit = True
                with anyio.move_on_after(_FORCE_EXIT_TIMEOUT_S):
                    await self._stopped.wait()
        if not self._stopped.is_set() and self._tg is not None:
            log.error("ingress.cancelled", reason="the HTTP server did not stop when forced")
            self._tg.cancel_scope.cancel()
