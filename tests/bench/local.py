"""Local generation (issue 10): llama.cpp's ``llama-server`` driven directly, then the same through modelbus.

Why: a local model is served by a ``llama-server`` child of the model worker, on a Unix socket, with
``parallel`` slots batched together. This measures what modelbus costs on top of that engine, and what the
slots buy, in one run, so the figures compare as ratios (the machines are shared and noisy).

1. Raw: the binary the worker would use (``find_llama_server``: ``$MODELBUS_LLAMA_SERVER`` or the cached
   build), with the arguments the worker would give it (``llama_server_args`` of the local provider, from
   the same model config), on a loopback TCP port. It is stopped before step 2: the two never share cores.
2. modelbus: nats-server, registry, model worker (which starts its own llama-server: the same binary, pinned
   in ``$MODELBUS_LLAMA_SERVER``) and ingress as processes, driven through the ingress's
   ``/v1/chat/completions``.

At each ``--concurrency`` level, ``--rounds`` times, that many streamed requests start together, each asking
for exactly ``--tokens`` tokens (``max_tokens`` and llama.cpp's ``ignore_eos``; the usage each stream
reports is checked), with llama.cpp's prompt cache off (``cache_prompt: false``) so that every request
evaluates its whole prompt, whichever slot held what before. One warm-up request goes first on each path.
Printed per level and path: aggregate tokens/s (all completion tokens / the batches' wall time), time to
first token p50, latency p50 and p99, and the median wall time of a batch; then the issue's ratios and a
markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from modelbus.config import ModelConfig, parse_config
from modelbus.workers.model.catalog import model_cache_dir, resolve_model_file
from modelbus.workers.model.engine.build import ENV_BINARY, find_llama_server, usable_cores
from modelbus.workers.model.providers.local import llama_server_args
from tests.bench.soak import percentile
from tests.bench.system import cpu_seconds, free_port, run_main, running_system, wait_ready
from tests.support.processes import ServiceProcess, wait_http_ok

CATALOG_MODEL = "qwen2.5-coder-0.5b-instruct"
MODEL = "local"  # its name in the bench's config
OLD_SINGLE_STREAM = 13.4  # tok/s, one stream through the in-process llama-cpp-python provider (issue 10)
# Long-answer prompts, one per request of a batch (the same set on both paths).
TOPICS = (
    "how a hash map works",
    "how TCP congestion control works",
    "how a B-tree index is searched and updated",
    "how garbage collection works in CPython",
    "how HTTP/2 multiplexing works",
    "how a compiler turns source code into machine code",
    "how public-key cryptography works",
    "how a database transaction is made durable",
)
SERVICES = ("registry", "model worker", "ingress")


@dataclass(frozen=True)
class Stream:
    """One request's outcome: seconds to the first content token and to the end, and the tokens made."""

    ttft: float
    latency: float
    tokens: int | None  # the usage's completion_tokens (else llama.cpp's timings.predicted_n)


@dataclass
class Level:
    """Every round of one concurrency level on one path."""

    concurrency: int
    walls: list[float] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens or 0 for s in self.streams) / sum(self.walls)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def ttft_p50(self) -> float:
        return statistics.median(s.ttft for s in self.streams) * 1000

    @property
    def latency_p50(self) -> float:
        return statistics.median(s.latency for s in self.streams) * 1000

    @property
    def latency_p99(self) -> float:
        return percentile([s.latency for s in self.streams], 99)

    def token_check(self, wanted: int) -> str:
        wrong = [s.tokens for s in self.streams if s.tokens != wanted]
        if not wrong:
            return f"{len(self.streams)}x{wanted} tokens"
        return f"WARNING {len(wrong)}/{len(self.streams)} streams did not make {wanted} tokens: {wrong}"


Results = dict[int, Level]


@dataclass(frozen=True)
class Load:
    """What each path is given: ``rounds`` batches at each concurrency level, ``tokens`` per request."""

    tokens: int
    levels: Sequence[int]
    rounds: int


def request_body(model: str, tokens: int, index: int) -> dict[str, object]:
    topic = TOPICS[index % len(TOPICS)]
    prompt = f"Explain in great detail, step by step and with examples, {topic}. Write at least 2000 words."
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # llama.cpp: generate all max_tokens, never stop at the end-of-text token
        "cache_prompt": False,  # llama.cpp: the same work for every request, not a slot's leftover prefix
    }


async def one_stream(http: httpx.AsyncClient, url: str, body: Mapping[str, object]) -> Stream:
    """Send one streamed chat completion; time its first content chunk and its end, read its usage."""
    started = time.perf_counter()
    first: float | None = None
    tokens: int | None = None
    async with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or (data := line[5:].strip()) == "[DONE]":
                continue
            chunk = msgspec.json.decode(data)
            if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", ())):
                first = time.perf_counter()
            if usage := chunk.get("usage"):
                tokens = usage.get("completion_tokens")
            elif tokens is None and (timings := chunk.get("timings")):
                tokens = timings.get("predicted_n")
    ended = time.perf_counter()
    return Stream(ttft=(first or ended) - started, latency=ended - started, tokens=tokens)


async def drive(base: str, model: str, load: Load, *, label: str) -> Results:
    """A warm-up request, then ``rounds`` batches of ``c`` requests started together for each level."""
    url = f"{base}/v1/chat/completions"
    limits = httpx.Limits(max_connections=max(load.levels), max_keepalive_connections=max(load.levels))
    results: Results = {}
    # a new connection per request on both paths: llama-server drops a kept-alive connection after a stream
    # without saying so (the worker's own client does the same, on its Unix socket)
    close = {"Connection": "close"}
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(600, connect=10), limits=limits, headers=close
    ) as http:
        warm = await one_stream(http, url, request_body(model, load.tokens, 0))
        print(f"  warm-up: {warm.latency:.2f} s, {warm.tokens} tokens")
        for concurrency in load.levels:
            level = results[concurrency] = Level(concurrency)
            for _ in range(load.rounds):
                started = time.perf_counter()
                batch = [
                    one_stream(http, url, request_body(model, load.tokens, i)) for i in range(concurrency)
                ]
                level.streams += await asyncio.gather(*batch)
                level.walls.append(time.perf_counter() - started)
            print(level_line(label, level, load.tokens))
    return results


def level_line(label: str, level: Level, tokens: int) -> str:
    return (
        f"  {label:<8} c={level.concurrency:<2} {level.tokens_per_s:>6.1f} tok/s   "
        f"TTFT p50 {level.ttft_p50:>6.0f} ms   latency p50 {level.latency_p50:>6.0f} ms "
        f"p99 {level.latency_p99:>6.0f} ms   batch wall {level.wall:>5.2f} s   {level.token_check(tokens)}"
    )


def bench_config(
    ingress_port: int, parallel: int, n_ctx: int | None, threads: int | None, extra: Sequence[str] = ()
) -> str:
    params: dict[str, object] = {"parallel": parallel, "n_ctx": n_ctx, "n_threads": threads}
    if extra:
        params["llama_server_args"] = json.dumps(list(extra))
    shown = ", ".join(f"{key}: {value}" for key, value in params.items() if value is not None)
    return (
        f"runtime:\n  http: {{port: {ingress_port}}}\n  heartbeat: {{interval: 1.0}}\n  log_level: info\n"
        f"models:\n  - name: {MODEL}\n    from: local:{CATALOG_MODEL}\n    params: {{{shown}}}\n"
    )


def model_file(model: ModelConfig) -> Path:
    resolved = resolve_model_file(
        model.provider_model, sha256=model.params.sha256, cache_dir=model_cache_dir(os.environ)
    )
    if not resolved.path.is_file():
        raise SystemExit(f"no model file {resolved.path}: run `modelbus models pull` first")
    return resolved.path


def machine_facts(binary: Path) -> list[str]:
    cpu = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    stamp = binary.parent / "build.json"
    build = json.dumps(json.loads(stamp.read_text())) if stamp.is_file() else "none next to the binary"
    return [
        f"cores usable: {usable_cores()} (of {os.cpu_count()}), CPU: {cpu}, {load_average()}",
        f"llama-server: {binary}",
        f"  version: {' | '.join((version.stdout + version.stderr).strip().splitlines()) or '?'}",
        f"  build.json: {build}",
    ]


def load_average() -> str:
    """The machine's load now: other work on these shared cores makes a run's figures meaningless."""
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


async def raw_llama_server(
    binary: Path, args: list[str], workdir: Path, load: Load, *, load_timeout: float
) -> Results:
    """The engine alone, on loopback TCP, with the worker's arguments; stopped when measured."""
    port = free_port()
    argv = [str(binary), "--host", "127.0.0.1", "--port", str(port), *args]
    print(f"raw llama-server on 127.0.0.1:{port}")
    server = ServiceProcess(argv, workdir / "llama-server-raw.log")
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=load_timeout)
        return await drive(f"http://127.0.0.1:{port}", MODEL, load, label="raw")
    except Exception:
        print(f"  FAILED; llama-server exit code {server.proc.poll()}; the end of its log:")
        print(*server.log_text().splitlines()[-15:], sep="\n    ")
        raise
    finally:
        server.terminate()


async def through_modelbus(workdir: Path, config_text: str, ingress_port: int, load: Load) -> Results:
    """registry, model worker and ingress as processes; the same load through the ingress."""
    base = f"http://127.0.0.1:{ingress_port}"
    print(f"modelbus (ingress on 127.0.0.1:{ingress_port}; logs in {workdir / 'logs'})")
    async with running_system(workdir, config_text, upstream_ports={}, services=SERVICES) as system:
        try:
            started = time.perf_counter()
            await wait_ready(base, MODEL)
            print(f"  model ready after {time.perf_counter() - started:.1f} s")
            pids = dict(system.pids)
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            results = await drive(base, MODEL, load, label="modelbus")
            used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        except Exception:
            print(f"  FAILED; processes exited: {system.exited() or 'none'}")
            for name in SERVICES:
                tail = system.processes[name].log_text().splitlines()[-15:]
                print(f"  --- the end of {name}'s log ---", *tail, sep="\n    ")
            raise
    print(
        "  CPU during the load (llama-server not included): "
        + ", ".join(f"{n} {s:.1f} s" for n, s in used.items())
    )
    return results


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def ratio_rows(raw: Results, bus: Results, parallel: int) -> list[tuple[str, str, str]]:
    """(what, measured, target) for the issue's three ratios, where the levels were measured."""
    rows = []
    if 1 in raw and 1 in bus:
        one = ratio(bus[1].tokens_per_s, raw[1].tokens_per_s)
        rows.append(("(a) one stream, modelbus / raw llama-server", f"{one:.2f}", "≥ 0.95"))
    if 4 in bus:
        aggregate = bus[4].tokens_per_s
        own = f", {ratio(aggregate, bus[1].tokens_per_s):.2f}x this run's one stream" if 1 in bus else ""
        rows.append((
            "(b) aggregate at c=4 through modelbus",
            f"{aggregate:.1f} tok/s = {aggregate / OLD_SINGLE_STREAM:.2f}x the old {OLD_SINGLE_STREAM}{own}",
            f"≥ 3x {OLD_SINGLE_STREAM} tok/s",
        ))  # fmt: skip
    if 1 in bus and 4 in bus:
        walls = f"{ratio(bus[4].wall, bus[1].wall):.2f}"
        if 1 in raw and 4 in raw:
            walls += f" (raw llama-server {ratio(raw[4].wall, raw[1].wall):.2f})"
        rows.append((f"(c) wall of 4 concurrent / 1 request, {parallel} slots", walls, "≤ 1.5"))
    return rows


def markdown(raw: Results, bus: Results, ratios: list[tuple[str, str, str]]) -> list[str]:
    lines = [
        "| c | raw tok/s | modelbus tok/s | ratio | TTFT p50 raw / modelbus | "
        "latency p50 / p99 modelbus | batch wall raw / modelbus |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in sorted(raw.keys() & bus.keys()):
        r, b = raw[c], bus[c]
        lines.append(
            f"| {c} | {r.tokens_per_s:.1f} | {b.tokens_per_s:.1f} "
            f"| {ratio(b.tokens_per_s, r.tokens_per_s):.2f} "
            f"| {r.ttft_p50:.0f} / {b.ttft_p50:.0f} ms | {b.latency_p50:.0f} / {b.latency_p99:.0f} ms "
            f"| {r.wall:.2f} / {b.wall:.2f} s |"
        )
    lines += ["", "| ratio | measured | target |", "|---|---|---|"]
    lines += [f"| {what} | {measured} | {target} |" for what, measured, target in ratios]
    return lines


async def main(args: argparse.Namespace, workdir: Path) -> int:
    binary = find_llama_server(os.environ)
    if binary is None:
        print("no llama-server: run `modelbus engine build` or set MODELBUS_LLAMA_SERVER to the binary")
        return 2
    # the model worker, started later with this environment, runs this very binary too
    os.environ[ENV_BINARY] = str(binary)
    ingress_port = free_port()
    config_text = bench_config(ingress_port, args.parallel, args.n_ctx, args.threads, args.llama_args.split())
    model = parse_config(config_text, os.environ).models[0]
    threads = model.params.n_threads or usable_cores()
    server_args = llama_server_args(model, model_file(model), threads=threads)
    load = Load(tokens=args.tokens, levels=args.concurrency, rounds=args.rounds)
    print(
        f"local generation benchmark: {CATALOG_MODEL}, {args.tokens} tokens per request, "
        f"{args.rounds} round(s) per level, parallel {model.params.parallel}, threads {threads}"
    )
    print(*machine_facts(binary), sep="\n")
    print(f"llama-server args: {' '.join(server_args)}\n")
    raw = await raw_llama_server(binary, server_args, workdir, load, load_timeout=model.params.load_timeout)
    print()
    bus = await through_modelbus(workdir / "modelbus", config_text, ingress_port, load)
    ratios = ratio_rows(raw, bus, model.params.parallel)
    print(f"\nat the end: {load_average()}")
    print("\nratios")
    print(*(f"  {what}: {measured}   (target {target})" for what, measured, target in ratios), sep="\n")
    print("\nfor docs/benchmarks.md\n")
    print(*markdown(raw, bus, ratios), sep="\n")
    return 0


def concurrency_levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=80, help="completion tokens per request (80)")
    parser.add_argument("--concurrency", type=concurrency_levels, default=[1, 4, 8], help="levels (1,4,8)")
    parser.add_argument("--rounds", type=int, default=2, help="batches per level (2)")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server slots (4)")
    parser.add_argument("--n-ctx", type=int, default=None, help="context per slot (the model's default)")
    parser.add_argument("--threads", type=int, default=None, help="default: every usable core")
    parser.add_argument("--llama-args", default="", help="more llama-server flags, e.g. '--flash-attn on'")
    parser.add_argument("--keep", type=Path, default=None, help="keep the logs and data in this folder")
    run_main(main, parser.parse_args(), prefix="modelbus-bench-local-")
