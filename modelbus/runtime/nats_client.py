"""Connect to NATS from typed settings: reconnect forever, log connection changes, never log secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import structlog
from nats.aio.client import Client

from modelbus.config import NatsSettings

__all__ = ("NatsAuthError", "connect", "connected")

log = structlog.get_logger(__name__)


class NatsAuthError(Exception):
    """The server refused this process's credentials when it first connected."""


def _is_auth_failure(exc: Exception) -> bool:
    # nats-py raises a plain Error for the server's `-ERR 'Authorization Violation'`: that fixed protocol
    # token (not free text) is the structured fact here
    return isinstance(exc, nats.errors.AuthorizationError) or (
        isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower()
    )


async def connect(settings: NatsSettings, url: str, *, name: str) -> Client:
    """A client that reconnects for ever (a NATS outage never ends a process).

    Wrong credentials at the first connection are not an outage: they fail at once, clearly.
    """
    first_connection = True

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", error=type(exc).__name__, detail=str(exc))
        if first_connection and _is_auth_failure(exc):
            raise NatsAuthError(
                f"the NATS server at {url} refused the credentials in runtime.nats (user/password, token or "
                "creds_file): check them"
            ) from exc

    async def on_disconnected() -> None:
        log.warning("nats.disconnected")

    async def on_reconnected() -> None:
        log.info("nats.reconnected", server=str(nc.connected_url.netloc if nc.connected_url else ""))

    nc = await nats.connect(
        servers=[u.strip() for u in url.split(",")],
        name=name,
        user=settings.user,
        password=settings.password,
        token=settings.token,
        user_credentials=settings.creds_file,
        connect_timeout=int(max(1, settings.connect_timeout)),
        drain_timeout=int(max(1, settings.drain_timeout)),
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    first_connection = False
    log.debug("nats.connected", name=name)
    return nc


@asynccontextmanager
async def connected(settings: NatsSettings, url: str, *, name: str) -> AsyncIterator[Client]:
    """Connect on enter; drain (bounded by ``drain_timeout``) on exit."""
    nc = await connect(settings, url, name=name)
    try:
        yield nc
    finally:
        if not nc.is_closed:
            try:
                await nc.drain()
            except Exception as exc:  # noqa: BLE001 - shutdown must finish; the cause is logged
                log.warning("nats.drain_failed", error=type(exc).__name__)
                await nc.close()
