"""``modelbus probe <kind>``: is a modelbus service alive on the bus? For container health checks.

Every modelbus process answers NATS's service discovery as ``modelbus-<kind>`` (``modelbus-registry``,
``modelbus-model-worker``, ...). The probe sends one ``$SRV.PING.modelbus-<kind>`` and succeeds if an
instance answers within the timeout. With ``this_host``, only a worker whose worker id names this machine
counts (a worker id is ``<kind>-<hostname>-<pid>-<hex>``), so in a container it checks the container's own
worker, not any worker of that kind.
"""

from __future__ import annotations

import re
import socket
import sys
from typing import Any

import anyio
import msgspec
import nats
import nats.errors

from modelbus.config import NatsSettings

__all__ = ("KIND_PATTERN", "ping", "run_probe", "worker_host")

KIND_PATTERN = re.compile(r"[a-z][a-z0-9-]*")
DEFAULT_TIMEOUT = 2.0


def worker_host(worker_id: str) -> str | None:
    """The hostname inside ``<kind>-<hostname>-<pid>-<hex>``, or None for anything else."""
    _, _, rest = worker_id.partition("-")
    parts = rest.rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0]


def _matches(reply: bytes, service: str, host: str | None) -> bool:
    try:
        info = msgspec.json.decode(reply)
    except msgspec.DecodeError:
        return False
    if not isinstance(info, dict) or info.get("name") != service:
        return False
    if host is None:
        return True
    metadata: Any = info.get("metadata") or {}
    worker_id = metadata.get("worker_id") if isinstance(metadata, dict) else None
    return isinstance(worker_id, str) and worker_host(worker_id) == host


async def ping(
    settings: NatsSettings, url: str, kind: str, *, host: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> bool:
    """True if a ``modelbus-<kind>`` instance (on ``host``, when given) answers within ``timeout`` seconds.

    Connecting counts against the timeout too; an unreachable server is a failed probe, not a wait.
    """
    service = f"modelbus-{kind}"
    deadline = anyio.current_time() + timeout
    nc = None
    with anyio.move_on_after(timeout):
        try:
            nc = await nats.connect(
                servers=[u.strip() for u in url.split(",")],
                name=f"probe-{kind}",
                user=settings.user,
                password=settings.password,
                token=settings.token,
                user_credentials=settings.creds_file,
                connect_timeout=max(1, int(timeout)),
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
        except (OSError, nats.errors.Error):
            return False
    if nc is None:
        return False
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.{service}", b"", reply=inbox)
        while (remaining := deadline - anyio.current_time()) > 0:
            try:
                msg = await sub.next_msg(timeout=remaining)
            except nats.errors.TimeoutError:
                return False
            if _matches(msg.data, service, host):
                return True
        return False
    finally:
        await nc.close()


def run_probe(settings: NatsSettings, url: str, kind: str, *, this_host: bool) -> int:
    """The command: exit code 0 if the service answered, 1 if not, 2 for a kind that is no service name."""
    if KIND_PATTERN.fullmatch(kind) is None:
        sys.stderr.write(f"modelbus: probe: `{kind}` is not a service kind (e.g. registry, model-worker)\n")
        return 2
    host = socket.gethostname() if this_host else None
    where = f" on {host}" if host else ""
    if anyio.run(lambda: ping(settings, url, kind, host=host)):
        sys.stdout.write(f"modelbus-{kind}{where}: ok\n")
        return 0
    sys.stderr.write(f"modelbus-{kind}{where}: no answer within {DEFAULT_TIMEOUT:g} s\n")
    return 1
