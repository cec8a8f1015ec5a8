"""``just soak``: a mixed load against the whole system, as separate processes, for a set time.

Starts nats-server, two stand-in upstreams (one answering chat, one answering the NSQL model with SQL), the
registry, a model worker, an NSQL worker (a small ``sales_data`` sample) and the ingress. Then, for
``--minutes`` (or ``--seconds``), keeps ``--concurrency`` clients busy with a mix of non-streaming chat,
streamed chat and ``GET /v1/models``, plus one client asking NSQL questions one at a time. Reports the errors
by route and status, p50/p99 per route, and the RSS of every process at the start and the end (growth in %;
the stand-in upstreams are shown but not judged).
Exit code 0 when the target holds: no errors, no process exited, and every process grew its RSS by less
than ``--max-growth`` percent (10 by default), judged between the medians of the first and the last third of
its samples (one every ``--progress`` seconds, the start and the end included): a single sample at each end
would judge where a garbage collector's saw-tooth happened to be.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import msgspec

from tests.bench.system import System, free_port, rss_kib, run_main, running_system, wait_ready

TOP5 = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM sales_data "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5"
)
QUESTION = {"query": "Get the top 5 customers by total sales", "model": "nsql", "datasets": ["sales_data"]}
MESSAGES = [{"role": "user", "content": "Say something short."}]
# the mix of the concurrent clients: route -> weight
MIX = {"chat": 5, "chat stream": 3, "models": 2}
ROUTES = ("chat", "chat stream", "models", "nsql")


class Stats:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[tuple[str, str]] = Counter()

    def record(self, route: str, started: float, outcome: str | None) -> None:
        self.latencies[route].append(time.perf_counter() - started)
        if outcome is not None:
            self.errors[(route, outcome)] += 1

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def one(http: aiohttp.ClientSession, base: str, route: str) -> str | None:
    """Send one request of ``route``; None when it succeeded, else what went wrong (status or exception)."""
    try:
        if route == "models":
            async with http.get(f"{base}/v1/models") as response:
                body = await response.read()
                ok = response.status == 200 and b'"bench"' in body
        elif route == "nsql":
            async with http.post(f"{base}/v1/nsql", data=msgspec.json.encode(QUESTION)) as response:
                body = await response.read()
                ok = response.status == 200 and b"total_sales" in body
        else:
            stream = route == "chat stream"
            payload = {"model": "bench", "messages": MESSAGES, "stream": stream}
            async with http.post(
                f"{base}/v1/chat/completions", data=msgspec.json.encode(payload)
            ) as response:
                body = await response.read()
                if stream:
                    ok = response.status == 200 and body.rstrip().endswith(b"data: [DONE]")
                else:
                    ok = response.status == 200 and b'"choices"' in body
        if ok:
            return None
        return str(response.status) if response.status != 200 else "200 (bad body)"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def client(
    http: aiohttp.ClientSession, base: str, stats: Stats, stop_at: float, rng: random.Random
) -> None:
    routes, weights = list(MIX), list(MIX.values())
    while time.perf_counter() < stop_at:
        route = rng.choices(routes, weights)[0]
        started = time.perf_counter()
        stats.record(route, started, await one(http, base, route))


async def nsql_client(http: aiohttp.ClientSession, base: str, stats: Stats, stop_at: float) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        stats.record("nsql", started, await one(http, base, "nsql"))


def rss_all(pids: dict[str, int]) -> dict[str, int]:
    found = {}
    for name, pid in pids.items():
        try:
            found[name] = rss_kib(pid)
        except (OSError, ValueError):
            found[name] = 0  # gone
    return found


async def progress(
    system: System, stats: Stats, started: float, stop_at: float, every: float, samples: list[dict[str, int]]
) -> None:
    while time.perf_counter() + every < stop_at:
        await asyncio.sleep(every)
        rss = rss_all(system.pids)
        samples.append(rss)
        print(
            f"  [{time.perf_counter() - started:>5.0f} s] {stats.requests} requests, "
            f"{sum(stats.errors.values())} errors; RSS MiB: "
            + ", ".join(f"{n} {kib / 1024:.0f}" for n, kib in rss.items()),
            flush=True,
        )


async def main(args: argparse.Namespace, workdir: Path) -> int:
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    chat_port, nsql_port, ingress_port = free_port(), free_port(), free_port()
    config = (
        f"runtime:\n  http: {{port: {ingress_port}}}\n  heartbeat: {{interval: 1.0}}\n"
        "  chat: {queue_depth: 4096}\n  log_level: info\n  state_dir: state\n"
        "models:\n"
        f"  - name: bench\n    from: openai:bench\n"
        f"    params: {{endpoint: 'http://127.0.0.1:{chat_port}/v1', api_key: sk-bench, capacity: 128}}\n"
        f"  - name: nsql\n    from: openai:nsql\n    datasets: [sales_data]\n"
        f"    params: {{endpoint: 'http://127.0.0.1:{nsql_port}/v1', api_key: sk-bench}}\n"
        "datasets:\n  - name: sales_data\n    from: sample:sales_data\n"
        f"    params: {{rows: '{args.rows}'}}\n"
    )
    upstreams = {"upstream chat": chat_port, "upstream nsql": nsql_port}
    async with running_system(workdir, config, upstream_ports=upstreams) as system:
        base = f"http://127.0.0.1:{ingress_port}"
        await system.control(chat_port, reply=" ".join(["word"] * 20), chunks=20)
        await system.control(nsql_port, reply=msgspec.json.encode({"sql": TOP5}).decode())
        await wait_ready(base, "bench")
        await wait_ready(base, "nsql")
        connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
        timeout = aiohttp.ClientTimeout(total=60)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as http:
            for _ in range(600):  # the NSQL worker loads its dataset first
                if await one(http, base, "nsql") is None:
                    break
                await asyncio.sleep(0.2)
            else:
                raise TimeoutError("modelbus did not answer /v1/nsql")
            warm = Stats()
            warmup = args.warmup if args.warmup is not None else min(120.0, seconds / 5)
            warm_stop = time.perf_counter() + warmup
            await asyncio.gather(
                nsql_client(http, base, warm, warm_stop),
                *(client(http, base, warm, warm_stop, random.Random(i)) for i in range(args.concurrency)),
            )  # the same mix first, so the start RSS is the warmed-up one, not the import-time one
            pids = system.pids
            rss_start = rss_all(pids)
            print(
                f"modelbus soak: {seconds:.0f} s after {warmup:.0f} s of warm-up, "
                f"{args.concurrency} concurrent clients "
                f"(mix {', '.join(f'{r} {w}' for r, w in MIX.items())}) + 1 NSQL client ({args.rows} rows)\n",
                flush=True,
            )
            stats = Stats()
            started = time.perf_counter()
            stop_at = started + seconds
            samples = [rss_start]
            reporter = asyncio.create_task(progress(system, stats, started, stop_at, args.progress, samples))
            await asyncio.gather(
                nsql_client(http, base, stats, stop_at),
                *(
                    client(http, base, stats, stop_at, random.Random(1000 + i))
                    for i in range(args.concurrency)
                ),
            )
            reporter.cancel()
            elapsed = time.perf_counter() - started
        rss_end = rss_all(pids)
        samples.append(rss_end)
        exited = system.exited()

    print(f"\n{stats.requests} requests in {elapsed:.0f} s ({stats.requests / elapsed:.0f} req/s)\n")
    print(f"  {'route':<12} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for route in ROUTES:
        values = stats.latencies.get(route, [])
        errors = sum(n for (r, _), n in stats.errors.items() if r == route)
        print(
            f"  {route:<12} {len(values):>9} {len(values) / elapsed:>8.1f} {percentile(values, 50):>8.2f} "
            f"{percentile(values, 99):>8.2f} {errors:>7}"
        )
    print("\nerrors by route and status:")
    for (route, outcome), n in sorted(stats.errors.items()):
        print(f"  {route:<12} {outcome:<24} {n}")
    if not stats.errors:
        print("  none")
    print(
        "\nRSS (MiB): start and end; the growth judged is between the medians of the first and the last third"
    )
    print("of the samples (every --progress seconds, start and end included), so that a process whose memory")
    print("saws up and down (nats-server's garbage collector, ClickHouse's caches) is judged by its trend:")
    print(f"  {'process':<14} {'start':>8} {'end':>8} {'growth':>8} {'first':>8} {'last':>8} {'judged':>8}")
    growths = {}
    third = max(1, len(samples) // 3)
    for name in pids:
        start, end = rss_start[name], rss_end[name]
        growth = (end - start) / start * 100 if start else float("inf")
        first = statistics.median(sample.get(name, 0) for sample in samples[:third])
        last = statistics.median(sample.get(name, 0) for sample in samples[-third:])
        trend = (last - first) / first * 100 if first else float("inf")
        stand_in = name.startswith("upstream")  # test infrastructure: shown, not judged
        if not stand_in:
            growths[name] = trend
        note = "   (stand-in, not judged)" if stand_in else ""
        print(
            f"  {name:<14} {start / 1024:>8.1f} {end / 1024:>8.1f} {growth:>7.1f}% {first / 1024:>8.1f} "
            f"{last / 1024:>8.1f} {trend:>7.1f}%{note}"
        )
    if exited:
        print(f"\nprocesses that exited during the soak: {exited}")
    grew = {n: g for n, g in growths.items() if g >= args.max_growth}
    passed = not stats.errors and not exited and not grew
    print(
        f"\n{'PASS' if passed else 'FAIL'}: {sum(stats.errors.values())} errors, "
        f"{len(exited)} processes exited, largest RSS growth (judged) {max(growths.values()):.1f}% "
        f"(target: zero errors, under {args.max_growth:.0f}%)"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=None, help="run this long instead of --minutes")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="concurrent chat/listing clients (default 16)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of the same load before the start RSS is read (default: a fifth of the run, at most "
        "120 s: nats-server remembers each message id for the work queues' duplicate window, up to 120 s, "
        "so its memory grows until then)",
    )
    parser.add_argument("--rows", type=int, default=20000, help="rows of the NSQL sample dataset")
    parser.add_argument("--max-growth", type=float, default=10.0, help="RSS growth target in %%")
    parser.add_argument("--progress", type=float, default=60.0, help="print a progress line this often (s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the logs and data in this folder")
    run_main(main, parser.parse_args(), prefix="modelbus-soak-")
