"""Start modelbus services as real processes, the way an operator would, and stop or kill them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx


class ServiceProcess:
    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no goodbye, no drain."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self._log.close()
        return self.proc.returncode


def modelbus_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelbus.cli.main", *args]


@contextmanager
def service(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(argv, log_path, env)
    try:
        yield process
    finally:
        if process.proc.poll() is None:
            process.terminate()


async def wait_http_ok(url: str, timeout: float = 60) -> httpx.Response:
    async with httpx.AsyncClient(timeout=2) as client:
        with anyio.fail_after(timeout):
            while True:
                try:
                    response = await client.get(url)
                    if response.status_code == 200:
                        return response
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.1)
