"""Spice's load-balancing workers (``workers:``): one model name, answered by one of several models.

:meth:`LoadBalancer.members` puts a worker's members in the order to try them, ready ones only: by
``order`` (fallback), or one drawn by ``weight`` first and the rest by weight, or in turn when neither is
given. :meth:`LoadBalancer.first_answer` asks each in that order until one answers: a member that fails
before its first token (5xx, 429, a timeout, not ready) hands the request to the next, and the client gets
one answer, or one error naming every member tried and why it failed. After the first token the answer is
that member's, as for any model.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from modelbus.config import WorkerConfig
from modelbus.ingress.errors import ApiError
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.work_queue.errors import BusFailure
from modelbus.schemas.status import ModelStatus

__all__ = ("LoadBalancer",)

T = TypeVar("T")


def _passes_on(status: int) -> bool:
    """Whether a member's failure lets the next member try (the request itself was not at fault)."""
    return status >= 500 or status in (408, 429)


class LoadBalancer:
    def __init__(self, workers: Sequence[WorkerConfig], views: ModelViewStore) -> None:
        self.views = views
        self._workers = {w.name: w for w in workers}
        self._turns = {w.name: itertools.count() for w in workers}

    def __contains__(self, name: str) -> bool:
        return name in self._workers

    def members(self, name: str) -> list[str]:
        """The ready members of worker ``name``, in the order to try them (see the module docstring)."""
        routing = self._workers[name].load_balance.routing
        ready = [
            r for r in routing if (v := self.views.get(r.from_)) is not None and v.status is ModelStatus.READY
        ]
        if not ready:
            return []
        if ready[0].order is not None:
            return [r.from_ for r in sorted(ready, key=lambda r: r.order or 0)]
        if ready[0].weight is not None:
            first = random.choices(ready, weights=[r.weight or 1 for r in ready])[0]  # noqa: S311 - spread
            rest = sorted((r for r in ready if r is not first), key=lambda r: -(r.weight or 1))
            return [first.from_, *(r.from_ for r in rest)]
        start = next(self._turns[name]) % len(ready)
        return [r.from_ for r in ready[start:] + ready[:start]]

    async def first_answer(self, name: str, ask: Callable[[str], Awaitable[T]]) -> tuple[str, T]:
        """The first member's answer to ``ask(member)`` that does not fail in a way the next could help."""
        members = self.members(name)
        if not members:
            listed = ", ".join(
                f"`{r.from_}` {v.status.value if (v := self.views.get(r.from_)) else 'unknown'}"
                for r in self._workers[name].load_balance.routing
            )
            raise ApiError(
                503, f"No member of `{name}` is ready: {listed}", code="model_not_ready", param="model",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        tried: list[str] = []
        statuses: list[int] = []
        for member in members:
            try:
                return member, await ask(member)
            except (ApiError, BusFailure) as exc:
                status, code, message = (
                    (exc.status_code, exc.code, exc.detail) if isinstance(exc, ApiError)
                    else (exc.status, exc.code, exc.message)
                )  # fmt: skip
                if not _passes_on(status):
                    raise
                statuses.append(status)
                tried.append(f"`{member}` {status} {code}: {message}")
        every_429 = all(s == 429 for s in statuses)
        raise ApiError(
            429 if every_429 else 502, f"Every member of `{name}` failed: " + "; ".join(tried),
            code="rate_limit_exceeded" if every_429 else "members_failed", param="model",
            headers={"Retry-After": "1"} if every_429 else None,
        )  # fmt: skip
