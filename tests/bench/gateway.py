"""Load generation and per-process accounting for the gateway benchmark (``tests/bench/chat.py``).

Two load generators behind one :func:`drive`: wrk when it is installed (a C client: the cheapest on the
shared cores) and the built-in one (``tests/bench/loadgen.py``) otherwise. Either way the generator's own CPU
is measured, so a reader sees what the client took from the two cores. :class:`Deployment` finds every
process ``modelbus up`` started (its children and theirs) and reads their CPU time and memory.
"""

from __future__ import annotations

import asyncio
import re
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.loadgen import run_load
from tests.bench.system import cpu_seconds, proc_stat, rss_kib

__all__ = ("Deployment", "Load", "client_name", "drive")

_WRK_SCRIPT = """wrk.method = "{method}"
wrk.body = io.open("{body}", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


@dataclass(frozen=True)
class Load:
    """One measured run: how many answers, how fast, and what the client spent."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def client_name(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "builtin"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --client builtin")
    return choice


async def drive(
    client: str, port: int, method: str, path: str, body: bytes | None, *, concurrency: int, seconds: float
) -> Load:
    """Keep ``concurrency`` requests in flight on 127.0.0.1:``port`` for ``seconds``."""
    if client == "wrk":
        return await _wrk(port, method, path, body, concurrency=concurrency, seconds=seconds)
    from tests.bench.loadgen import get, post

    request = post(path, body or b"") if method == "POST" else get(path)
    started = time.process_time()
    result = await run_load("127.0.0.1", port, request, concurrency=concurrency, seconds=seconds)
    return Load(
        requests=result.requests, seconds=result.seconds, p50_ms=result.p50, p99_ms=result.percentile(99),
        errors=result.errors, client_cpu_s=time.process_time() - started,
    )  # fmt: skip


async def _wrk(
    port: int, method: str, path: str, body: bytes | None, *, concurrency: int, seconds: float
) -> Load:
    with tempfile.TemporaryDirectory(prefix="modelbus-wrk-") as tmp:
        script = Path(tmp) / "request.lua"
        payload = Path(tmp) / "body"
        payload.write_bytes(body or b"")
        script.write_text(_WRK_SCRIPT.format(method=method, body=payload))
        threads = 1 if concurrency == 1 else 2
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = await asyncio.create_subprocess_exec(
            "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script),
            f"http://127.0.0.1:{port}{path}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.decode()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{text}")
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", text).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    return Load(
        requests=requests, seconds=seconds, p50_ms=_latency(text, "50%"), p99_ms=_latency(text, "99%"),
        errors=errors,
        client_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    )  # fmt: skip


def _latency(text: str, percentile: str) -> float:
    found = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    return float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")


@dataclass
class Deployment:
    """The processes under ``root`` (``modelbus up``), named by what they run."""

    root: int
    names: dict[int, str] = field(default_factory=dict)

    def refresh(self) -> None:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int(proc_stat(int(entry.name))[1])
                except (OSError, ValueError, IndexError):
                    continue
        found = {self.root}
        grew = True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in found} - found
            grew, found = bool(more), found | more
        names: dict[int, str] = {}
        counts: dict[str, int] = {}
        for pid in sorted(found):
            try:
                name = _name(
                    Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"), launcher=pid == self.root
                )
            except OSError:
                continue
            counts[name] = counts.get(name, 0) + 1
            names[pid] = name
        seen: dict[str, int] = {}
        for pid, name in names.items():  # several of a kind (ingress processes): number them
            if counts[name] > 1:
                seen[name] = seen.get(name, 0) + 1
                names[pid] = f"{name} {seen[name]}"
        self.names = names

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each process so far."""
        found = {}
        for pid, name in self.names.items():
            try:
                found[name] = cpu_seconds(pid)
            except OSError:
                continue
        return found

    def memory(self, key: str = "VmRSS") -> dict[str, float]:
        """``VmRSS`` (now) or ``VmHWM`` (peak) of each process, in MiB."""
        found = {}
        for pid, name in self.names.items():
            try:
                found[name] = rss_kib(pid, key) / 1024
            except (OSError, ValueError):
                continue
        return found


def _name(argv: list[bytes], *, launcher: bool) -> str:
    if launcher:
        return "launcher"
    words = [a.decode(errors="replace") for a in argv if a]
    if words and words[0].endswith("nats-server"):
        return "nats-server"
    if "modelbus.cli.main" in words:
        command = words[words.index("modelbus.cli.main") + 1 :]
        if command[:2] == ["worker", "model"]:
            return "model worker"
        if command[:1] == ["worker"] and len(command) > 1:
            return f"{command[1]} worker"
        return command[0] if command else "modelbus"
    return Path(words[0]).name if words else "?"
