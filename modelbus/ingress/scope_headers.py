"""A request header read straight from the ASGI scope (for code that runs in front of Litestar)."""

from __future__ import annotations

from litestar.types import Scope

__all__ = ("header",)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case, as ASGI gives names), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
