"""Wait for something while watching the HTTP client: if it hangs up first, stop waiting.

Every request that waits for a worker goes through here, so it is written on asyncio's own task: one
watcher task that reads the ASGI ``receive`` until ``http.disconnect`` and then cancels the waiting task,
which turns that cancellation (and only that one) into ``None``. An anyio task group per request costs
several times more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from litestar.types import Receive

__all__ = ("unless_disconnected",)

T = TypeVar("T")


async def unless_disconnected(receive: Receive, wait: Callable[[], Awaitable[T]]) -> T | None:
    """``await wait()``, or None when the client disconnected first (the caller then cancels the work).

    Exceptions from ``wait`` propagate as they are; a cancellation from anywhere else stays one. The
    watcher belongs to this call: it is cancelled before the call returns.
    """
    waiting = asyncio.current_task()
    assert waiting is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        waiting.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await wait()
    except asyncio.CancelledError:
        if left and waiting.uncancel() == 0:  # ours, and nobody else's
            return None
        raise
    finally:
        watcher.cancel()
