"""``modelbus up``: the whole system on one machine, each part in its own process, supervised.

With ``runtime.nats.url: embedded`` it first starts nats-server from the venv (loopback only, data under
the state directory) and publishes its URL in ``<state_dir>/nats.url`` so that more workers started by
hand on this machine find it. It then starts the registry, one model worker per configured model, one
embedding worker when embedding models are configured, one NSQL worker when datasets are configured, the
history sink (unless that NSQL worker keeps the history in
its embedded engine), and the ingress; a process that dies is restarted with backoff.
SIGINT or SIGTERM stops them in reverse order (the ingress first), each within a bounded time, and then
the server.

The ingress starts once the registry has written, for every configured model, a view that lists a worker
(or after ``REPORT_WAIT_S``): the views in the bucket outlive a run, and until then ``/v1/models`` would
show the last run's, after a clean stop an ``error`` "the last worker serving this model shut down".
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.abc
import httpx
import msgspec
import nats.errors
import structlog
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from modelbus.config import Config
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.jetstream import model_views
from modelbus.runtime.lifecycle import wait_for_signal
from modelbus.runtime.nats_client import NatsAuthError, connected
from modelbus.schemas.subjects import encode_token
from modelbus.schemas.views import ModelView

__all__ = ("Launcher", "Reports")

log = structlog.get_logger(__name__)

RESTART_MAX_BACKOFF = 30.0
HEALTHY_RUN = 60.0
REPORT_WAIT_S = 30.0  # the longest the ingress waits for the model workers' first reports
_REPORT_POLL_S = 0.1
_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError, NatsAuthError)


class Reports:
    """Whether the registry has heard from a worker of each model since :meth:`mark`.

    A view the registry wrote after the mark that lists a worker was computed from that worker's heartbeats:
    the view the last run left for the model is gone.
    """

    def __init__(self, kv: KeyValue, models: Sequence[str]) -> None:
        self._kv = kv
        self._models = {encode_token(m): m for m in models}
        self._marks: dict[str, int] = {}
        self._decoder = msgspec.json.Decoder(ModelView)
        self.pending = sorted(models)

    async def mark(self) -> None:
        """Remember each model's revision now; only views written later count."""
        for key in self._models:
            entry = await self._entry(key)
            self._marks[key] = entry[1] if entry is not None else 0

    async def wait(self) -> None:
        """Return once every model's view has been written since the mark and lists a worker."""
        while True:
            try:
                self.pending = sorted([m for k, m in self._models.items() if not await self._reported(k)])
            except _NATS_ERRORS as exc:  # a reconnect in progress: the next poll will do
                log.debug("launcher.reports_unreadable", error=repr(exc))
            if not self.pending:
                return
            await anyio.sleep(_REPORT_POLL_S)

    async def _reported(self, key: str) -> bool:
        entry = await self._entry(key)
        if entry is None or entry[1] <= self._marks[key]:
            return False
        try:
            return bool(self._decoder.decode(entry[0]).workers)
        except msgspec.DecodeError:
            return False

    async def _entry(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value or b"", entry.revision or 0


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
        while not self.stopping:  # stopped before it started (the ingress, still waiting for reports)
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
    def __init__(
        self,
        config: Config,
        config_path: Path,
        *,
        nats_url: str | None = None,
        report_wait: float = REPORT_WAIT_S,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.state_dir = (config_path.parent / config.runtime.state_dir).resolve()
        self._nats_url = nats_url
        self._report_wait = report_wait

    def _argv(self, *command: str, url: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "modelbus.cli.main",
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
        if self.config.embeddings:
            children.append(Child("embed-worker", self._argv("worker", "embed", url=url), stop_timeout=grace))
        if self.config.datasets:
            children.append(Child("nsql-worker", self._argv("worker", "nsql", url=url), stop_timeout=grace))
        runtime = self.config.runtime
        if runtime.history.enabled and not (runtime.clickhouse.embedded and self.config.datasets):
            # with the embedded engine and an NSQL worker, that worker keeps the history (NSQL can query it)
            children.append(Child("history", self._argv("history", url=url), stop_timeout=grace))
        count = runtime.http.process_count
        children += [
            Child(
                "ingress" if count == 1 else f"ingress-{n}",
                self._argv("ingress", url=url),
                stop_timeout=grace,
            )
            for n in range(1, count + 1)
        ]
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
            ingresses = [c for c in children if c.name.startswith("ingress")]
            services = [c for c in children if c not in ingresses]
            async with anyio.create_task_group() as tg:
                await tg.start(self._serve, ingresses, url, name="ingress")  # marks the bucket first
                for child in services:
                    tg.start_soon(child.supervise, name=child.name)
                tg.start_soon(self._announce)
                signum = await wait_for_signal()
                log.info("launcher.stopping", signal=signal.Signals(signum).name)
                for child in reversed(children):
                    await child.stop()
                tg.cancel_scope.cancel()
        log.info("launcher.stopped")

    async def _serve(
        self, ingresses: Sequence[Child], url: str, *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:  # fmt: skip
        """Start the ingress processes once the registry has heard from every model's worker (see the module).

        Started before any other child, so that the views it waits for are written by this run.
        """
        async with AsyncExitStack() as stack:
            reports = await self._reports(stack, url)
            task_status.started()
            if reports is not None:
                await self._wait_reported(reports)
        async with anyio.create_task_group() as tg:
            for ingress in ingresses:
                tg.start_soon(ingress.supervise, name=ingress.name)

    async def _reports(self, stack: AsyncExitStack, url: str) -> Reports | None:
        """The models' revisions now, on a connection kept in ``stack``; None if NATS does not answer."""
        models = [m.name for m in self.config.models]
        if not models:
            return None
        # bounded by about one connection attempt: every child waits for this (and signals too)
        with anyio.move_on_after(min(self._report_wait, self.config.runtime.nats.connect_timeout + 1)):
            try:
                nc = await stack.enter_async_context(
                    connected(self.config.runtime.nats, url, name="launcher")
                )
                reports = Reports(await model_views(nc.jetstream()), models)
                await reports.mark()
            except _NATS_ERRORS as exc:
                log.warning("launcher.reports_unavailable", error=repr(exc))
                return None
            return reports
        log.warning("launcher.reports_unavailable", error="timeout")
        return None

    async def _wait_reported(self, reports: Reports) -> None:
        """Wait (bounded) for the reports; a model whose worker never reports is logged, not waited for."""
        log.info("launcher.waiting_for_workers", models=reports.pending)
        with anyio.move_on_after(self._report_wait):
            await reports.wait()
            log.info("launcher.workers_reported")
            return
        log.warning("launcher.workers_not_reported", models=reports.pending, waited_s=self._report_wait)

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
