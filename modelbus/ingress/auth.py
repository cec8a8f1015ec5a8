"""API-key authentication for every route but the probes, as ASGI middleware in front of routing.

A key is accepted in ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. Each presented key is hashed and
compared with :func:`hmac.compare_digest` against the hash of every configured key, with no early exit, so
neither the key's length nor the position of the matching key shows in the timing. Authentication runs before
routing, so an unauthenticated client cannot probe which routes exist (401 rather than 404). A missing or
wrong key gets a 401 in OpenAI's error shape with ``WWW-Authenticate: Bearer``. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from modelbus.ingress.asgi_json import send_json
from modelbus.ingress.errors import error_body

__all__ = ("KEY_OWNER", "PUBLIC_PATHS", "ApiKeyAuth", "key_owner", "presented_keys")

PUBLIC_PATHS = frozenset({"/health", "/v1/ready"})

_MISSING = "Missing API key: send it in the X-API-Key header or as 'Authorization: Bearer <key>'."
_INVALID = "Invalid API key."
_CHALLENGE = ((b"www-authenticate", b"Bearer"),)


KEY_OWNER = "key_owner"  # the request state's entry: a hash of the accepted key ("" when auth is off)


def key_owner(state: Any) -> str:
    """Who sent the request, as :class:`ApiKeyAuth` saw it: a hash of the key, or "" without auth."""
    return str(getattr(state, KEY_OWNER, "") or "")


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every non-empty key the request presents, from ``X-API-Key`` and ``Authorization: Bearer``."""
    keys: list[bytes] = []
    for name, value in headers:
        if name == b"x-api-key":
            key = value.strip()
        elif name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                continue
            key = rest.strip()
        else:
            continue
        if key:
            keys.append(key)
    return keys


def _rejection(message: str) -> bytes:
    return msgspec.json.encode(error_body(401, message, code="invalid_api_key"))


class ApiKeyAuth:
    """ASGI middleware: lets a request through only with a configured key (the probes always pass)."""

    def __init__(self, app: ASGIApp, api_keys: Iterable[str], *, public_paths: frozenset[str] = PUBLIC_PATHS):
        self._app = app
        self._digests = tuple(_digest(key.encode()) for key in api_keys)
        if not self._digests:
            raise ValueError("ApiKeyAuth needs at least one key (leave it out to serve without auth)")
        self._public = public_paths
        self._missing = _rejection(_MISSING)
        self._invalid = _rejection(_INVALID)

    def accepts(self, keys: Iterable[bytes]) -> bool:
        """True when any presented key equals any configured key; compares every pair, always."""
        return self.accepted(keys) is not None

    def accepted(self, keys: Iterable[bytes]) -> bytes | None:
        """The digest of the first presented key that is a configured one (every pair is compared)."""
        found: bytes | None = None
        for key in keys:
            digest = _digest(key)
            match = False
            for known in self._digests:
                match |= hmac.compare_digest(digest, known)
            if match and found is None:
                found = digest
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or self._is_public(scope["path"]):
            await self._app(scope, receive, send)
            return
        keys = presented_keys(scope["headers"])
        digest = self.accepted(keys) if keys else None
        if digest is not None:
            # whose request this is, for what it may read later (stored responses); never the key itself
            scope.setdefault("state", {})[KEY_OWNER] = digest.hex()[:32]
            await self._app(scope, receive, send)
            return
        await send_json(send, 401, self._invalid if keys else self._missing, _CHALLENGE)

    def _is_public(self, path: str) -> bool:
        return path in self._public or (len(path) > 1 and path.rstrip("/") in self._public)
