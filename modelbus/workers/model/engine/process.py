"""An engine child process (``llama-server``, an embedding server): started, health-checked, stopped for sure.

The child never outlives the worker: it is started through a tiny exec stub that asks Linux to SIGKILL it
when its parent dies (``PR_SET_PDEATHSIG``), so even a worker killed with SIGKILL leaves no orphan; a normal
stop is SIGTERM, then SIGKILL after a bounded wait. Its output is kept, the last lines in memory for error
messages and every line in the worker's log at debug level.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import structlog

__all__ = ("BASE_URL", "EngineExited", "EngineProcess", "LlamaServerProcess", "describe_exit")

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1
BASE_URL = "http://llama"  # any host: requests go to the child's Unix socket
STOP_TIMEOUT = 5.0
TAIL_LINES = 30
# Runs in the child before exec: SIGKILL on the parent's death, and give up if the parent is already gone.
_EXEC_STUB = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class EngineExited(Exception):
    """The child exited (or could not start) before it was healthy."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class EngineProcess:
    """One engine child process; ``engine`` names it in errors (``llama-server``) and, with ``_``, in log
    events (``llama_server.started``)."""

    def __init__(
        self, argv: Sequence[str], *, name: str, engine: str, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.engine = engine
        self._event = engine.replace("-", "_")
        self.env = env
        self.process: anyio.abc.Process | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.ready_at = 0.0  # monotonic time it turned ready
        self.ready = False  # answered its health check (and, for llama-server, a real completion)
        self.watched = False  # its output and exit are being followed

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    async def start(self) -> None:
        stub = [sys.executable, "-S", "-c", _EXEC_STUB, str(os.getpid())]
        env = {**os.environ, **self.env} if self.env is not None else None
        self.process = await anyio.open_process(
            [*stub, *self.argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        log.info(f"{self._event}.started", model=self.name, pid=self.process.pid, argv=self.argv[1:])

    async def drain_output(self) -> None:
        """Read the child's output until it closes: the last lines kept, every line logged at debug."""
        assert self.process is not None
        assert self.process.stdout is not None
        pending = b""
        async for block in self.process.stdout:
            pending += block
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.tail.append(line)
                    log.debug(f"{self._event}.output", model=self.name, line=line)

    def last_lines(self, count: int = 8) -> str:
        return " | ".join(list(self.tail)[-count:])

    async def wait_healthy(
        self, session: aiohttp.ClientSession, *, timeout: float, url: str = f"{BASE_URL}/health"
    ) -> None:
        """Poll ``url`` until it answers 200; raise :class:`EngineExited` if the child exits first."""
        assert self.process is not None
        with anyio.fail_after(timeout):
            while True:
                if self.process.returncode is not None:
                    raise EngineExited(f"{self.engine} {describe_exit(self.process.returncode)}")
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass  # not listening yet, or still loading the model (503)
                await anyio.sleep(0.05)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`."""
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_TIMEOUT, shield=True):
                await process.wait()
            if process.returncode is None:
                log.warning(f"{self._event}.kill", model=self.name, pid=process.pid)
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()
        if process is not None:
            with anyio.CancelScope(shield=True):
                await process.aclose()


class LlamaServerProcess(EngineProcess):
    """``llama-server`` serving one model on ``<a private directory>/llama.sock``."""

    def __init__(self, binary: Path, args: Sequence[str], *, name: str) -> None:
        self.binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="modelbus-llama-"))
        self.socket = self._dir / "llama.sock"
        super().__init__([str(binary), "--host", str(self.socket), *args], name=name, engine="llama-server")

    async def stop(self) -> None:
        """As every engine; the private directory goes too."""
        try:
            await super().stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
