"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending the same request
again as soon as the previous answer is complete (Content-Length or chunked), recording latencies.

Written on asyncio protocols (under uvloop) to stay cheap: the point is to load the system, not itself.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

__all__ = ("Result", "run_load")


@dataclass
class Result:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")


class _Client(asyncio.Protocol):
    def __init__(self, request: bytes, result: Result, stop_at: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.result = result
        self.stop_at = stop_at
        self.done = done
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's transports are not asyncio's classes
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.stop_at:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            complete = self._response_length()
            if complete is None:
                return
            status, length = complete
            del self.buffer[:length]
            self.result.latencies.append(time.perf_counter() - self.sent_at)
            self.result.statuses[status] = self.result.statuses.get(status, 0) + 1
            if status >= 400:
                self.result.errors += 1
            self._send()

    def _response_length(self) -> tuple[int, int] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        body_start = end + 4
        marker = head.find(b"content-length:")
        if marker >= 0:
            length = int(
                head[marker + 15 : head.find(b"\r\n", marker) if head.find(b"\r\n", marker) > 0 else None]
            )
            total = body_start + length
            return (status, total) if len(self.buffer) >= total else None
        if b"transfer-encoding: chunked" in head:
            terminator = self.buffer.find(b"\r\n0\r\n\r\n", body_start - 2)
            return (status, terminator + 7) if terminator >= 0 else None
        raise ValueError("response without length")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def run_load(host: str, port: int, request: bytes, *, concurrency: int, seconds: float) -> Result:
    """Keep ``concurrency`` requests in flight for ``seconds``; ``request`` is a whole HTTP/1.1 message."""
    loop = asyncio.get_running_loop()
    result = Result(concurrency=concurrency, seconds=seconds)
    started = time.perf_counter()
    stop_at = started + seconds
    waits = []
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda d=done: _Client(request, result, stop_at, d), host, port)
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), timeout=seconds + 60)
    result.seconds = time.perf_counter() - started
    return result


def post(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body


def get(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()
