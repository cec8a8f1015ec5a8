"""A whole JSON response on the raw ASGI interface, for the code in front of Litestar (auth, the request
log's fallback 500, the fast lane), which has no Response object to build one."""

from __future__ import annotations

from collections.abc import Iterable

from litestar.types import Send

__all__ = ("send_json",)

_JSON = (b"content-type", b"application/json")


async def send_json(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """``body`` with ``status``, its content type and length, and ``headers`` after them."""
    raw = [_JSON, (b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
