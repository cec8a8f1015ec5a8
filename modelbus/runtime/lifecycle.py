"""Run one service until SIGTERM or SIGINT, then shut it down within a bounded time."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import structlog
from nats.aio.client import Client
from nats.micro import add_service

from modelbus.config import Config
from modelbus.runtime.nats_client import connected
from modelbus.runtime.version import package_version

__all__ = ("run_service", "wait_for_signal")

log = structlog.get_logger(__name__)

ServiceFactory = Callable[[Client], AbstractAsyncContextManager[Any]]


async def wait_for_signal() -> int:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            return int(signum)
    raise AssertionError("unreachable")


def _arm_watchdog(seconds: float) -> None:
    """Once shutdown starts, the process ends within ``seconds`` whatever a stuck component does."""

    def expire() -> None:
        log.error("shutdown.timeout", seconds=seconds)
        os._exit(70)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


async def run_service(
    config: Config, nats_url: str, *, name: str, factory: ServiceFactory, discoverable: bool = True
) -> None:
    """Connect, enter the service, wait for a signal, then leave it (drain included) in bounded time.

    ``discoverable`` services answer NATS's ``$SRV.PING/INFO/STATS`` as ``modelbus-<name>`` (workers do
    that themselves, with their own statistics).
    """
    async with connected(config.runtime.nats, nats_url, name=name) as nc, factory(nc):
        if discoverable:
            service = await add_service(
                nc, name=f"modelbus-{name}", version=package_version(), description=f"modelbus {name}",
                metadata={"pid": str(os.getpid())},
            )  # fmt: skip
        log.info("service.ready", service=name)
        signum = await wait_for_signal()
        log.info("service.stopping", service=name, signal=signal.Signals(signum).name)
        _arm_watchdog(config.runtime.shutdown_grace + config.runtime.nats.drain_timeout + 5)
        if discoverable:
            await service.stop()
    log.info("service.stopped", service=name)
