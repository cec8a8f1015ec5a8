"""Concurrent embedding requests joined into one engine call, bounded in size, in wait and in concurrency.

Requests queue here; the batcher's own task takes them in order, waiting at most ``wait`` seconds after the
first for others to join, and makes calls of at most ``max_batch`` inputs (a larger request is a call of its
own), at most ``capacity`` at once. Only requests with the same ``dimensions`` and ``user`` share a call.
Each gets its own vectors back, in order, and its share of the call's tokens (by characters; exact when it
was alone). :attr:`Batcher.stats` counts what was joined, for ``$SRV.STATS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import msgspec

from modelbus.workers.embed.provider import Embedded

__all__ = ("BatchStats", "Batcher")

Embed = Callable[..., Awaitable[Embedded]]
Key = tuple[int | None, str | None]


class BatchStats(msgspec.Struct):
    requests: int = 0
    inputs: int = 0
    batches: int = 0  # engine calls
    batched_requests: int = 0  # requests that shared their engine call with another
    largest_batch: int = 0  # inputs


class _Waiting:
    __slots__ = ("deadline", "done", "error", "inputs", "key", "result")

    def __init__(self, inputs: list[Any], key: Key, deadline: float) -> None:
        self.inputs = inputs
        self.key = key
        self.deadline = deadline
        self.done = anyio.Event()
        self.result: Embedded | None = None
        self.error: BaseException | None = None


def _size(item: Any) -> int:
    return len(item) if isinstance(item, str | list) else 1


class Batcher:
    def __init__(self, embed: Embed, *, max_batch: int, wait: float, capacity: int) -> None:
        self._embed = embed
        self._max_batch = max_batch
        self._wait = wait
        self._limiter = anyio.CapacityLimiter(capacity)
        self._pending: list[_Waiting] = []
        self._wake = anyio.Event()
        self.stats = BatchStats()

    async def embed(
        self, inputs: list[Any], *, dimensions: int | None, user: str | None, deadline: float
    ) -> Embedded:
        """This request's vectors, from a call it may share with others."""
        waiting = _Waiting(inputs, (dimensions, user), deadline)
        self._pending.append(waiting)
        self._wake.set()
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        assert waiting.result is not None
        return waiting.result

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take queued requests into calls, until cancelled (the worker owns this task)."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if sum(len(w.inputs) for w in self._pending) < self._max_batch:
                    await anyio.sleep(self._wait)  # let others join the first
                while self._pending:
                    batch = self._take()
                    token = object()  # the call, not this loop, holds its slot until it ends
                    await self._limiter.acquire_on_behalf_of(token)
                    tg.start_soon(self._call, batch, token)

    def _take(self) -> list[_Waiting]:
        """The next call's requests: the oldest, and those after it of the same key while they fit."""
        first = self._pending[0]
        batch, size = [first], len(first.inputs)
        for waiting in self._pending[1:]:
            if waiting.key == first.key and size + len(waiting.inputs) <= self._max_batch:
                batch.append(waiting)
                size += len(waiting.inputs)
        taken = {id(w) for w in batch}
        self._pending = [w for w in self._pending if id(w) not in taken]
        return batch

    async def _call(self, batch: list[_Waiting], token: object) -> None:
        try:
            inputs = [item for waiting in batch for item in waiting.inputs]
            stats = self.stats
            stats.requests += len(batch)
            stats.inputs += len(inputs)
            stats.batches += 1
            stats.largest_batch = max(stats.largest_batch, len(inputs))
            if len(batch) > 1:
                stats.batched_requests += len(batch)
            dimensions, user = batch[0].key
            try:
                embedded = await self._embed(
                    inputs, dimensions=dimensions, user=user, deadline=max(w.deadline for w in batch)
                )
            except Exception as exc:  # noqa: BLE001 - every request of the call gets the failure
                for waiting in batch:
                    waiting.error = exc
                    waiting.done.set()
                return
            sizes = [sum(_size(i) for i in waiting.inputs) for waiting in batch]
            total = sum(sizes) or 1
            start = 0
            for waiting, size in zip(batch, sizes, strict=True):
                count = len(waiting.inputs)
                share = (
                    embedded.prompt_tokens
                    if len(batch) == 1
                    else round(embedded.prompt_tokens * size / total)
                )
                waiting.result = Embedded(
                    vectors=embedded.vectors[start : start + count], prompt_tokens=share
                )
                start += count
                waiting.done.set()
        finally:
            self._limiter.release_on_behalf_of(token)
