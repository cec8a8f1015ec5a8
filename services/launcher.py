"""``modelbus up``: the whole system on one machine, each part in its own process, supervised.

With ``runtime.nats.url: embedded`` it first starts nats-server from the venv (loopback only, data under
the state directory) and publishes its URL in ``<state_dir>/nats.url`` so that more workers started by
hand on this machine find it. It then starts the registry, one model worker per configured model, one
NSQL worker when datasets are configured, the history sink (unless that NSQL worker keeps the history in
its embedded engine), and the ingress; a process that dies is restarted with backoff.
SIGINT or SIGTERM stops them in reverse order (the ingress first), each within a bounded time, and then
the server.
"""

from __future__ import annotations

import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.abc
import httpx
import structlog

from services.config import Config
from services.runtime.embedded_nats import EmbeddedNats
from services.runtime.lifecycle import wait_for_signal

__all__ = ("Launcher",)

log = structlog.get_logger(__name__)

RESTART_MAX_BACKOFF = 30.0
HEALTHY_RUN = 60.0


class Child:
    """One supervised service process."""

    def __init__(self, name: str, argv: list[str], *, stop_timeout: float) -> None:
        self.name = name
        self.argv = argv
        self.stop_timeout = stop_timeout
        self.process: anyio.abc.Process | None = None
        self.stopping = False

    async def supervise(self) -> None:
        backoff = 1.0
        while True:
            self.process = await anyio.open_process(self.argv, stdin=None, stdout=None, stderr=None)
            log.info("launcher.started", child=self.name, pid=self.process.pid)
            started = anyio.current_time()
            code = await self.process.wait()
            if self._stopped():
                return
            if anyio.current_time() - started > HEALTHY_RUN:
                backoff = 1.0  # it ran well for a while: this is a new failure, not the same crash loop
            log.error("launcher.child_exited", child=self.name, code=code, restart_in_s=backoff)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX_BACKOFF)

    def _stopped(self) -> bool:
        return self.stopping

    async def stop(self) -> None:
        self.stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(self.stop_timeout, shield=True):
            await process.wait()
            return
        log.warning("launcher.kill", child=self.name)
        process.kill()
        await process.wait()


class Launcher:
    def __init__(self, config: Config, config_path: Path, *, nats_url: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.state_dir = (config_path.parent / config.runtime.state_dir).resolve()
        self._nats_url = nats_url

    def _argv(self, *command: str, url: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "services.cli",
            *command,
            "--config",
            str(self.config_path),
            "--nats-url",
            url,
        ]

    def children(self, url: str) -> list[Child]:
        grace = self.config.runtime.shutdown_grace + self.config.runtime.nats.drain_timeout
        children = [Child("registry", self._argv("registry", url=url), stop_timeout=grace)]
        children += [
            Child(
                f"model-worker:{m.name}",
                self._argv("worker", "model", "--model", m.name, url=url),
                stop_timeout=grace,
            )
            for m in self.config.models
        ]
        if self.config.datasets:
            children.append(Child("nsql-worker", self._argv("worker", "nsql", url=url), stop_timeout=grace))
        runtime = self.config.runtime
        if runtime.history.enabled and not (runtime.clickhouse.embedded and self.config.datasets):
            # with the embedded engine and an NSQL worker, that worker keeps the history (NSQL can query it)
            children.append(Child("history", self._argv("history", url=url), stop_timeout=grace))
        children.append(Child("ingress", self._argv("ingress", url=url), stop_timeout=grace))
        return children

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            url = self._nats_url
            if url is None and self.config.runtime.nats.embedded:
                server = await stack.enter_async_context(EmbeddedNats(self.state_dir / "nats"))
                url = server.url
                published = self.state_dir / "nats.url"
                published.write_text(url + "\n")
                stack.callback(published.unlink, missing_ok=True)
            url = url or self.config.runtime.nats.url
            children = self.children(url)
            async with anyio.create_task_group() as tg:
                for child in children:
                    tg.start_soon(child.supervise, name=child.name)
                tg.start_soon(self._announce)
                signum = await wait_for_signal()
                log.info("launcher.stopping", signal=signal.Signals(signum).name)
                for child in reversed(children):
                    await child.stop()
                tg.cancel_scope.cancel()
        log.info("launcher.stopped")

    async def _announce(self) -> None:
        """Tell the person who typed ``up`` where the API is, once it answers."""
        http = self.config.runtime.http
        base = f"http://{'localhost' if http.host in ('127.0.0.1', '0.0.0.0') else http.host}:{http.port}"  # noqa: S104
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                try:
                    if (await client.get(f"{base}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.5)
        print(  # noqa: T201 - for the person who typed `modelbus up`
            f"[modelbus] serving the API on {base} (try {base}/v1/models?status=true)",
            file=sys.stderr,
            flush=True,
        )
