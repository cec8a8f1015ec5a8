"""``--chat``: the same questions asked of a model with runtime tools over ``POST /v1/chat/completions``.

A chat answer is prose, so only a question whose gold result is one value (one row, one column) can be
scored: it passes when the answer states that value. Numbers are matched as written in any usual way
(``1629739.8``, ``1,629,739.80``, and rounded to a whole number or to two places), dates as ISO dates, text
case-insensitively. Other questions are skipped in this mode; refusals are scored by ``/v1/nsql`` only.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from decimal import Decimal
from typing import Any

import httpx

__all__ = ("ask_chat", "scalar_of", "states")

_SEPARATORS = re.compile(r"(?<=\d)[,\s](?=\d{3}\b)")


def scalar_of(rows: list[tuple[Any, ...]]) -> Any | None:
    """The one value of a one-row, one-column result; None otherwise."""
    return rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else None


def _spellings(value: Any) -> set[str]:
    if isinstance(value, bool):
        return {str(value).lower()}
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value))
        forms = {f"{number:.2f}", f"{number:.0f}", format(number.normalize(), "f")}
        return {f.rstrip(".") for f in forms}
    if isinstance(value, dt.date):
        return {value.isoformat()[:10]}
    return {str(value).strip().lower()}


def states(text: str, value: Any) -> bool:
    """Whether ``text`` states ``value`` (see the module docstring)."""
    plain = _SEPARATORS.sub("", text).lower()
    numbers = set(re.findall(r"-?\d+(?:\.\d+)?", plain))
    spellings = _spellings(value)
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return bool(spellings & numbers)
    return any(s in plain for s in spellings)


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
