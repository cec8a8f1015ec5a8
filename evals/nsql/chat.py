"""``--chat``: the same questions asked of a model with runtime tools over ``POST /v1/chat/completions``.

A chat answer is prose, so only a question whose gold result is one value (one row, one column) can be
scored: it passes when the answer states that value. A count must be stated exactly; another number may be
rounded (to two places, or within 0.1%), with or without thousands separators; dates as ISO dates; text
case-insensitively. Other questions are skipped in this mode; refusals are scored by ``/v1/nsql`` only.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from decimal import Decimal
from typing import Any

import httpx

__all__ = ("REL_TOLERANCE", "ask_chat", "scalar_of", "states")

_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
REL_TOLERANCE = Decimal("0.001")  # a stated fraction may be rounded (53.4% for 53.4059)


def scalar_of(rows: list[tuple[Any, ...]]) -> Any | None:
    """The one value of a one-row, one-column result; None otherwise."""
    return rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else None


def _close(stated: Decimal, gold: Decimal) -> bool:
    """A whole-number gold (a count) is stated exactly; another may be rounded to two places or by 0.1%."""
    if gold == gold.to_integral_value():
        return stated == gold
    return abs(stated - gold) <= max(Decimal("0.01"), abs(gold) * REL_TOLERANCE)


def states(text: str, value: Any) -> bool:
    """Whether ``text`` states ``value`` (see the module docstring)."""
    plain = _DIGIT_COMMA.sub("", text).lower()
    if isinstance(value, bool):
        return str(value).lower() in plain
    if isinstance(value, int | float | Decimal):
        gold = Decimal(str(value))
        return any(_close(Decimal(n), gold) for n in _NUMBER.findall(plain))
    if isinstance(value, dt.date):
        return value.isoformat()[:10] in plain
    return str(value).strip().lower() in plain


async def ask_chat(
    http: httpx.AsyncClient, base_url: str, question: str, model: str
) -> tuple[int, str, float]:
    """Ask ``model`` the question (temperature 0); the status, the answer's text or error, the latency."""
    body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    response = await http.post(f"{base_url.rstrip('/')}/v1/chat/completions", json=body)
    latency = (time.perf_counter() - started) * 1000
    try:
        decoded = response.json()
    except ValueError:
        return response.status_code, response.text, latency
    if response.status_code != 200:
        return response.status_code, str(decoded.get("error", decoded)), latency
    message = (decoded.get("choices") or [{}])[0].get("message") or {}
    return 200, str(message.get("content") or ""), latency
