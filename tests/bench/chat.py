"""``just bench``: chat completions straight to the stand-in upstream, and through modelbus, in one run.

Starts nats-server, the stand-in upstream and the modelbus processes (registry, one model worker, ingress)
exactly as an operator would, then drives each scenario with the same load generator, first against the
stand-in directly and then through modelbus. Prints requests/s, p50 and p99, the added latency, and the CPU
time each process spent per request. Machines are shared and noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import uvloop

from tests.bench.loadgen import Result, post, run_load
from tests.bench.system import running_system

MESSAGES = [{"role": "user", "content": "Say something short."}]
UPSTREAM = "upstream"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    stream: bool


SCENARIOS = (
    Scenario("non-streaming c=1", 1, stream=False),
    Scenario("non-streaming c=64", 64, stream=False),
    Scenario("20-chunk streams c=16", 16, stream=True),
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body(model: str, stream: bool) -> bytes:
    return msgspec.json.encode({"model": model, "messages": MESSAGES, "stream": stream})


async def wait_ready(base: str, model: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(600):
            try:
                r = await http.get(f"/v1/models/{model}", params={"status": "true"})
                if r.status_code == 200 and r.json().get("status") == "ready":
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("modelbus did not become ready")


def line(label: str, r: Result) -> str:
    return (
        f"  {label:<10} {r.rate:>9.0f} req/s   p50 {r.p50:>7.2f} ms   p99 {r.percentile(99):>7.2f} ms"
        f"   errors {r.errors}"
    )


async def main(seconds: float, workdir: Path, runtime: list[str]) -> int:
    upstream_port, ingress_port = free_port(), free_port()
    config = (
        f"runtime:\n  http: {{port: {ingress_port}}}\n  heartbeat: {{interval: 1.0}}\n"
        f"  chat: {{queue_depth: 4096}}\n  log_level: info\n"
        + "".join(f"  {setting}\n" for setting in runtime)
        + f"models:\n  - name: bench\n    from: openai:bench\n"
        f"    params: {{endpoint: 'http://127.0.0.1:{upstream_port}/v1', api_key: sk-bench, "
        "capacity: 128}\n"
    )
    async with running_system(
        workdir,
        config,
        upstream_ports={UPSTREAM: upstream_port},
        services=("registry", "model worker", "ingress"),
    ) as system:
        await wait_ready(f"http://127.0.0.1:{ingress_port}", "bench")
        await system.control(upstream_port, reply=" ".join(["word"] * 20), chunks=20)
        pids = {name: pid for name, pid in system.pids.items() if name != UPSTREAM}
        print(f"modelbus chat benchmark, {seconds:.0f} s per run, {os.cpu_count()} cores")
        print(f"runtime settings: {'; '.join(runtime) or 'defaults'}\n")
        for scenario in SCENARIOS:
            request = post("/v1/chat/completions", body("bench", scenario.stream))
            direct = await run_load(
                "127.0.0.1", upstream_port, request, concurrency=scenario.concurrency, seconds=seconds
            )
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            through = await run_load(
                "127.0.0.1", ingress_port, request, concurrency=scenario.concurrency, seconds=seconds
            )
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            print(f"{scenario.name}")
            print(line("direct", direct))
            print(line("modelbus", through))
            print(
                f"  {'added p50':<10} {through.p50 - direct.p50:>9.2f} ms    "
                f"throughput ratio {through.rate / direct.rate:.2f}"
            )
            per_request = {
                name: (after[name] - before[name]) / max(1, through.requests) * 1e6 for name in pids
            }
            print("  CPU per request: " + ", ".join(f"{n} {us:.0f} us" for n, us in per_request.items()))
            print()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the logs and data in this folder")
    parser.add_argument(
        "--runtime", action="append", default=[],
        help="a runtime setting in YAML, e.g. --runtime 'history: {enabled: false}' (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        raise SystemExit(uvloop.run(main(args.seconds, args.keep, args.runtime)))
    with tempfile.TemporaryDirectory(prefix="modelbus-bench-") as tmp:
        raise SystemExit(uvloop.run(main(args.seconds, Path(tmp), args.runtime)))
