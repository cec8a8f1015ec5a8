"""W3C trace context: continue the caller's trace, or start one, and hand a child ``traceparent`` on."""

from __future__ import annotations

import re

import msgspec

from modelbus.runtime.ids import unique_hex

__all__ = ("Span", "start_span")

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class Span(msgspec.Struct, frozen=True):
    """This component's span: its trace, its own id, and the id of the span that asked for the work."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None

    @property
    def traceparent(self) -> str:
        """The header for the work this span asks others to do (they become its children)."""
        return f"00-{self.trace_id}-{self.span_id}-01"


def start_span(traceparent: str | None) -> Span:
    """A new span, the child of ``traceparent`` when that is a valid W3C header, else of a new trace.

    An invalid header (wrong shape, version ``ff``, all-zero ids) starts a new trace, as the W3C spec asks.
    """
    if traceparent:
        found = _TRACEPARENT.fullmatch(traceparent.strip().lower())
        if found is not None:
            version, trace_id, parent_id, _flags = found.groups()
            if version != "ff" and trace_id != _ZERO_TRACE and parent_id != _ZERO_SPAN:
                return Span(trace_id, unique_hex(8), parent_id)
    return Span(unique_hex(16), unique_hex(8))
