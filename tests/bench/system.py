"""Start the whole system as separate processes for a benchmark or a soak: nats-server (embedded, loopback),
stand-in upstreams and the modelbus services, exactly as an operator would; read each process's RSS."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.processes import ServiceProcess, modelbus_argv

__all__ = (
    "System",
    "cpu_seconds",
    "free_port",
    "proc_stat",
    "rss_kib",
    "run_main",
    "running_system",
    "wait_ready",
)

# service name -> the ``modelbus`` sub-command that runs it
SERVICES: Mapping[str, tuple[str, ...]] = {
    "registry": ("registry",),
    "model worker": ("worker", "model"),
    "nsql worker": ("worker", "nsql"),
    "embed worker": ("worker", "embed"),
    "ingress": ("ingress",),
}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first, parent pid second)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) ``pid`` has used."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(base: str, model: str, *, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(int(timeout * 10)):
            try:
                r = await http.get(f"/v1/models/{model}", params={"status": "true"})
                if r.status_code == 200 and r.json().get("status") == "ready":
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("modelbus did not become ready")


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """The resident set size of ``pid`` in KiB: now (``VmRSS`` in /proc/<pid>/status), or its peak
    (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise ValueError(f"no {key} for pid {pid}")


@dataclass
class System:
    nats: EmbeddedNats
    logs: Path
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        found = {name: p.pid for name, p in self.processes.items()}
        if self.nats._proc is not None:
            found["nats-server"] = self.nats._proc.pid
        return found

    def exited(self) -> dict[str, int]:
        """The processes that have exited, with their exit codes."""
        return {name: code for name, p in self.processes.items() if (code := p.proc.poll()) is not None}

    async def control(self, upstream_port: int, **behaviour: object) -> None:
        """Set a stand-in upstream's behaviour (see tests.support.upstream.Behaviour)."""
        async with httpx.AsyncClient() as http:
            response = await http.post(f"http://127.0.0.1:{upstream_port}/_control", json=behaviour)
            response.raise_for_status()


@asynccontextmanager
async def running_system(
    workdir: Path,
    config_text: str,
    *,
    upstream_ports: Mapping[str, int],
    services: Sequence[str] = tuple(name for name in SERVICES if name != "embed worker"),
) -> AsyncIterator[System]:
    """nats-server, a stand-in upstream per ``upstream_ports`` entry, and ``services`` on ``config_text``
    (by default every service but the embedding worker, which needs ``embeddings:`` in the config)."""
    async with EmbeddedNats(workdir / "nats") as nats_server:
        config = workdir / "modelbus.yaml"
        config.write_text(config_text)
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        system = System(nats_server, logs)
        common = ("--config", str(config), "--nats-url", nats_server.url)
        try:
            for name, port in upstream_ports.items():
                system.processes[name] = ServiceProcess(
                    [sys.executable, "-m", "tests.support.upstream", "--port", str(port)],
                    logs / f"{name.replace(' ', '-')}.log",
                )
            for name in services:
                system.processes[name] = ServiceProcess(
                    modelbus_argv(*SERVICES[name], *common), logs / f"{name.replace(' ', '-')}.log"
                )
            await _wait_upstreams(upstream_ports.values())
            yield system
        finally:
            for process in reversed(list(system.processes.values())):
                process.terminate()


async def _wait_upstreams(ports: Iterable[int]) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        for port in ports:
            for _ in range(300):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError(f"the stand-in upstream on port {port} did not start")


def run_main(
    main: Callable[[argparse.Namespace, Path], Awaitable[int]], args: argparse.Namespace, *, prefix: str
) -> None:
    """Run ``main(args, workdir)`` under uvloop and exit with its code; the work folder is ``args.keep``
    (kept, for its logs) or a temporary one."""
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        raise SystemExit(uvloop.run(main(args, args.keep)))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        raise SystemExit(uvloop.run(main(args, Path(tmp))))
