"""``just bench``: what modelbus adds to a remote model's calls, in CPU, latency and memory, in one run.

Starts a stand-in upstream that is never the bottleneck (``tests/bench/fast_upstream.py``) and the whole
system as an operator does (``modelbus up`` on a config with one remote model of capacity 128 and no
datasets), then drives each scenario first straight at the stand-in and then through modelbus, with the same
client (wrk when installed, else the built-in generator). Prints requests/s, p50 and p99, the added p50, the
CPU time per request of every process (and of modelbus with nats-server in all, the figure the targets are
about), the client's own CPU per request, and each process's memory idle and at its peak.

``--ingress 1,2`` repeats the run with that many ingress processes (``runtime.http.processes``). Machines are
shared and noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from tests.bench.gateway import Deployment, Load, client_name, drive
from tests.bench.system import free_port, run_main, wait_ready
from tests.support.processes import ServiceProcess, modelbus_argv

MODEL = "bench"
SHORT = "Say something short."


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    method: str = "POST"
    path: str = "/v1/chat/completions"
    prompt_bytes: int = 0  # 0: the short prompt
    stream: bool = False

    def body(self) -> bytes | None:
        if self.method == "GET":
            return None
        words = SHORT if not self.prompt_bytes else ("lorem ipsum " * (self.prompt_bytes // 12 + 1))
        content = words[: self.prompt_bytes] if self.prompt_bytes else words
        messages = [{"role": "user", "content": content}]
        return msgspec.json.encode({"model": MODEL, "messages": messages, "stream": self.stream})


SCENARIOS = (
    Scenario("chat c=1", 1),
    Scenario("chat c=64", 64),
    Scenario("chat 1 KB prompt c=64", 64, prompt_bytes=1024),
    Scenario("chat 16 KB prompt c=64", 64, prompt_bytes=16 * 1024),
    Scenario("20-chunk streams c=16", 16, stream=True),
    Scenario("GET /v1/models c=16", 16, method="GET", path="/v1/models"),
)


@asynccontextmanager
async def stand_in(workdir: Path) -> AsyncIterator[tuple[int, ServiceProcess]]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.fast_upstream", "--port", str(port), "--chunks", "20"]
    process = ServiceProcess(argv, workdir / "stand-in.log")
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield port, process
    finally:
        process.terminate()


@asynccontextmanager
async def deployment(
    workdir: Path, upstream: int, ingress: int, runtime: list[str]
) -> AsyncIterator[tuple[int, int]]:
    """``modelbus up`` on one remote model and no datasets; yields the ingress port."""
    port = free_port()
    state = workdir / f"state-{ingress}"
    config = (
        f"runtime:\n  http: {{port: {port}{f', processes: {ingress}' if ingress > 1 else ''}}}\n"
        f"  state_dir: {state}\n"
        "  chat: {queue_depth: 4096}\n"
        + "".join(f"  {setting}\n" for setting in runtime)
        + f"models:\n  - name: {MODEL}\n    from: openai:{MODEL}\n"
        f"    params: {{endpoint: 'http://127.0.0.1:{upstream}/v1', api_key: sk-bench, capacity: 128}}\n"
    )
    path = workdir / f"modelbus-{ingress}.yaml"
    path.write_text(config)
    launcher = ServiceProcess(modelbus_argv("up", "--config", str(path)), workdir / f"modelbus-{ingress}.log")
    try:
        await wait_ready(f"http://127.0.0.1:{port}", MODEL, timeout=120)
        yield port, launcher.pid
    finally:
        launcher.terminate(60)


def _row(label: str, load: Load) -> str:
    return (
        f"  {label:<9} {load.rate:>8.0f} req/s   p50 {load.p50_ms:>7.2f} ms   p99 {load.p99_ms:>7.2f} ms"
        f"   errors {load.errors}   client CPU {load.client_cpu_s / max(1, load.requests) * 1e6:.0f} us/req"
    )


def _mib(values: dict[str, float]) -> str:
    return (
        ", ".join(f"{name} {mib:.0f}" for name, mib in values.items()) + f"; all {sum(values.values()):.0f}"
    )


async def run(args: argparse.Namespace, workdir: Path, client: str, upstream: int, ingress: int) -> None:
    async with deployment(workdir, upstream, ingress, args.runtime) as (port, root):
        processes = Deployment(root)
        processes.refresh()
        await asyncio.sleep(args.settle)  # the first heartbeats and views, then idle
        idle = processes.memory()
        print(f"--- {ingress} ingress process{'es' if ingress > 1 else ''} ---")
        print(f"idle RSS (MiB): {_mib(idle)}\n")
        for scenario in SCENARIOS:
            if args.only and not any(word in scenario.name for word in args.only):
                continue
            body = scenario.body()
            load = {"concurrency": scenario.concurrency, "seconds": args.seconds}
            direct = await drive(client, upstream, scenario.method, scenario.path, body, **load)
            processes.refresh()
            before = processes.cpu()
            through = await drive(client, port, scenario.method, scenario.path, body, **load)
            after = processes.cpu()
            per = {n: (after[n] - before.get(n, 0.0)) / max(1, through.requests) * 1e6 for n in after}
            gateway = sum(us for name, us in per.items() if name != "launcher")
            print(scenario.name)
            print(_row("direct", direct))
            print(_row("modelbus", through))
            print(
                f"  added p50 {through.p50_ms - direct.p50_ms:.2f} ms, throughput ratio "
                f"{through.rate / max(1e-9, direct.rate):.2f}, CPU per request: modelbus + nats-server "
                f"{gateway:.0f} us ({', '.join(f'{n} {us:.0f}' for n, us in per.items() if us >= 0.5)})\n"
            )
        peak = processes.memory("VmHWM")
        print(f"peak RSS (MiB): {_mib(peak)}\n")


async def main(args: argparse.Namespace, workdir: Path) -> int:
    client = client_name(args.client)
    print(
        f"modelbus gateway benchmark: {args.seconds:g} s per run, {os.cpu_count()} cores, client {client}, "
        f"runtime settings: {'; '.join(args.runtime) or 'defaults'}\n"
    )
    async with stand_in(workdir) as (upstream, _process):
        for ingress in args.ingress:
            await run(args, workdir, client, upstream, ingress)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured run")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before the idle RSS is read")
    parser.add_argument("--client", choices=("auto", "wrk", "builtin"), default="auto")
    parser.add_argument(
        "--ingress", type=lambda s: [int(n) for n in s.split(",")], default=[1],
        help="ingress process counts to run, e.g. 1,2",
    )  # fmt: skip
    parser.add_argument("--only", action="append", default=[], help="run the scenarios whose name has this")
    parser.add_argument("--keep", type=Path, default=None, help="keep the logs and data in this folder")
    parser.add_argument(
        "--runtime", action="append", default=[],
        help="a runtime setting in YAML, e.g. --runtime 'history: {enabled: false}' (repeatable)",
    )  # fmt: skip
    run_main(main, parser.parse_args(), prefix="modelbus-bench-")
