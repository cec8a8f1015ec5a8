"""What every provider offers, and the loop that brings a model to ``ready`` and keeps trying until it is."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import msgspec
import structlog

from modelbus.runtime.work_queue.errors import JobFailed
from modelbus.schemas.status import ErrorInfo
from modelbus.workers.model.state import ModelState

__all__ = ("ChatCall", "CheckFailed", "Emit", "Provider", "ProviderError", "keep_ready")

log = structlog.get_logger(__name__)

Emit = Callable[[bytes], Coroutine[Any, Any, None]]


class CheckFailed(Exception):
    """A provider could not make its model ready, classified from structured facts."""

    def __init__(self, error: ErrorInfo, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.retryable = retryable


class ProviderError(JobFailed):
    """A chat request failed; ``status`` is what the client gets, the rest is OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "server_error",
        code: str | None = None,
        param: str | None = None,
        unhealthy: ErrorInfo | None = None,
    ) -> None:
        super().__init__(status, message, code=code, type_=type_, param=param)
        # set when the failure says the model cannot serve anyone (a revoked key): it is checked again
        self.unhealthy = unhealthy


class ChatCall(msgspec.Struct, kw_only=True):
    """One chat request as a provider runs it: the OpenAI body with the model's defaults merged in."""

    request_id: str
    body: dict[str, Any]
    include_usage: bool = False
    deadline: float = 0.0  # unix seconds; 0 means none


class Provider(Protocol):
    """One configured model, served by some backend (a local GGUF, an OpenAI-compatible server)."""

    state: ModelState

    async def check(self) -> None:
        """Load or probe the model for real; raise :class:`CheckFailed` when it cannot serve."""

    async def complete(self, call: ChatCall) -> bytes:
        """Run a non-streaming completion; the JSON of an OpenAI ``chat.completion``."""

    async def stream(self, call: ChatCall, emit: Emit) -> None:
        """Run a streaming completion, passing the JSON of each ``chat.completion.chunk`` to ``emit``;
        the usage chunk is included when ``call.include_usage`` (computed if the backend gives none)."""

    async def watch(self) -> CheckFailed:
        """Wait until the model, once ready, can no longer serve (its engine died); why. Runs while the
        worker does; the worker then reports the error and checks the provider again until it is ready."""

    async def aclose(self) -> None:
        """Release what the provider holds (HTTP clients, engine processes)."""


class Checkable(Protocol):
    """What :func:`keep_ready` needs of a backend: its state, and a real check (chat or embeddings)."""

    state: ModelState

    async def check(self) -> None: ...


async def keep_ready(provider: Checkable, *, initial_backoff: float, max_backoff: float) -> None:
    """Check the provider until it passes, backing off (with jitter) between failed checks.

    The state goes ``loading`` → ``ready``, or ``error`` and back to ``ready`` on its own once the cause
    is gone. A failure marked not retryable stays in ``error``.
    """
    backoff = initial_backoff
    while True:
        try:
            await provider.check()
        except CheckFailed as failure:
            provider.state.set_error(failure.error, failure.message)
            if not failure.retryable:
                return
            delay = min(backoff, max_backoff) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
            log.info("model.recheck_scheduled", model=provider.state.model, in_s=round(delay, 2))
            await anyio.sleep(delay)
            backoff = min(backoff * 2, max_backoff)
        else:
            provider.state.set_ready()
            return
