"""NSQL benchmark: the seed's question through modelbus with a stand-in model that answers at once.

Starts nats-server, the stand-in upstream (answering the top-5 SQL), a model worker, an NSQL worker on the
1M-row ``sales_data`` sample and the ingress, as separate processes; asks "Get the top 5 customers by total
sales" repeatedly (one at a time) and reports the end-to-end latency and, from the NSQL worker's request log,
the time spent outside the model (context, validation, execution, rendering): p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

import httpx
import msgspec
import uvloop

from tests.bench.loadgen import post, run_load
from tests.bench.system import free_port, running_system

TOP5 = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM sales_data "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5"
)
QUESTION = {"query": "Get the top 5 customers by total sales", "datasets": ["sales_data"]}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(seconds: float, workdir: Path) -> int:
    upstream_port, ingress_port = free_port(), free_port()
    config = (
        f"runtime:\n  http: {{port: {ingress_port}}}\n  heartbeat: {{interval: 1.0}}\n"
        "  state_dir: state\n"
        f"models:\n  - name: bench\n    from: openai:bench\n    datasets: [sales_data]\n"
        f"    params: {{endpoint: 'http://127.0.0.1:{upstream_port}/v1', api_key: sk-bench}}\n"
        "datasets:\n  - name: sales_data\n    from: sample:sales_data\n"
    )
    async with running_system(workdir, config, upstream_ports={"upstream": upstream_port}) as system:
        await system.control(upstream_port, reply=msgspec.json.encode({"sql": TOP5}).decode())
        async with httpx.AsyncClient(timeout=60) as http:
            for _ in range(600):
                try:
                    warm = await http.post(f"http://127.0.0.1:{ingress_port}/v1/nsql", json=QUESTION)
                    if warm.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            else:
                raise TimeoutError("modelbus did not answer /v1/nsql")
        worker_log = system.logs / "nsql-worker.log"
        log_lines_before = len(worker_log.read_text().splitlines())
        result = await run_load(
            "127.0.0.1",
            ingress_port,
            post("/v1/nsql", msgspec.json.encode(QUESTION)),
            concurrency=1,
            seconds=seconds,
        )
        lines = worker_log.read_text().splitlines()[log_lines_before:]
        outside = [
            float(entry["outside_model_ms"])
            for entry in (json.loads(line) for line in lines if line.startswith("{"))
            if entry.get("event") == "nsql.request" and entry.get("status") == 200
        ]
        print(f"NSQL benchmark: the top-5 question on 1M rows, one at a time, {seconds:.0f} s\n")
        print(
            f"  end to end     {result.rate:>7.1f} req/s   p50 {result.p50:>7.2f} ms   "
            f"p99 {result.percentile(99):>7.2f} ms   errors {result.errors}"
        )
        if outside:
            p50, p99 = statistics.median(outside), percentile(outside, 99)
            print(
                f"  outside model  p50 {p50:>7.2f} ms   p99 {p99:>7.2f} ms"
                f"   ({len(outside)} requests; target: p50 under 30 ms)"
            )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelbus-bench-nsql-") as tmp:
        raise SystemExit(uvloop.run(main(args.seconds, Path(tmp))))
