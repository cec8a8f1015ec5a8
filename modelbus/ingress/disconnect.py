"""Wait for something while watching the HTTP client: if it hangs up first, stop waiting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from litestar import Request

__all__ = ("unless_disconnected",)

T = TypeVar("T")


async def unless_disconnected(request: Request[Any, Any, Any], wait: Callable[[], Awaitable[T]]) -> T | None:
    """``await wait()``, or None when the client disconnected first (the caller then cancels the work).

    Exceptions from ``wait`` propagate as they are (never wrapped in an exception group).
    """
    result: list[T] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch_disconnect)
        try:
            result.append(await wait())
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            failed.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return result[0] if result else None
