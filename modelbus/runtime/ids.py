"""Identifiers that must be unique, not secret: request ids, bus ids, trace and span ids.

Drawn from the process's Mersenne Twister (seeded from the OS at start), which costs a fraction of a system
call per id; 128 random bits make a collision between any two ids of any two processes negligible. Anything
that grants access (response ids a client may read back, keys) comes from :mod:`secrets` instead.
"""

from __future__ import annotations

import random

__all__ = ("unique_hex",)

_random = random.Random()  # noqa: S311 - uniqueness, not secrecy (see the module docstring)


def unique_hex(nbytes: int = 16) -> str:
    """``nbytes`` random bytes as lowercase hex, never all zeros (W3C trace context forbids that)."""
    return f"{_random.getrandbits(nbytes * 8) or 1:0{nbytes * 2}x}"
