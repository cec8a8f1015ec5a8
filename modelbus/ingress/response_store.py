"""Stored responses (``store: true``) in the ``modelbus_responses`` KV bucket, so any ingress can continue a
conversation (``previous_response_id``), retrieve or delete it. A response belongs to the API key that made
it (a hash of it: ``owner``); another key, or a request without one, finds nothing."""

from __future__ import annotations

import re

import msgspec
import nats.errors
import structlog
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from modelbus.schemas.responses import StoredResponse

__all__ = ("ResponseStore", "new_response_id")

log = structlog.get_logger(__name__)
_decoder = msgspec.json.Decoder(StoredResponse)
_ID = re.compile(r"resp_[0-9a-f]{32}")


def new_response_id(hex_id: str) -> str:
    return f"resp_{hex_id}"


class ResponseStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def put(self, response_id: str, stored: StoredResponse) -> bool:
        """Keep it; False when it could not be kept (too large for one message, NATS away): logged."""
        try:
            await self._kv.put(response_id, msgspec.json.encode(stored))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("responses.not_stored", response_id=response_id, error=type(exc).__name__)
            return False
        return True

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        if not _ID.fullmatch(response_id):
            return None
        try:
            entry = await self._kv.get(response_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        stored = _decoder.decode(entry.value)
        return stored if stored.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        await self._kv.delete(response_id)
        return True
