"""Relative dates count from the data, not the clock: the clock functions in generated SQL become the
data's latest date, written as a literal the user sees in the answer's SQL.

Data that ends on 2025-12-31 answers "orders in the last 30 days" with nothing when counted from today's
clock, and "last year" with a year it may not hold. The prompt says the anchor (the latest value of any
date column in it); a model that still writes ``today()``, ``now()``, ``CURDATE()``, ``current_date`` or
``yesterday()`` gets them replaced by ``toDate('<anchor>')`` (``now()`` by the anchor's last second), so
the SQL shown says which date "today" was.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

__all__ = ("pin_today",)

_DATE_FUNCTIONS = frozenset({"today", "curdate", "current_date"})
_TIME_FUNCTIONS = frozenset({"now", "now64", "current_timestamp", "localtimestamp"})


def _clock(node: exp.Expr) -> str | None:
    """``date``, ``time`` or ``yesterday`` for a clock function call, else None."""
    if isinstance(node, exp.CurrentDate):
        return "date"
    if isinstance(node, exp.CurrentTimestamp):
        return "time"
    if not isinstance(node, exp.Anonymous) or node.expressions:
        return None
    name = node.name.lower()
    if name in _DATE_FUNCTIONS:
        return "date"
    if name in _TIME_FUNCTIONS:
        return "time"
    return "yesterday" if name == "yesterday" else None


def _replacement(node: exp.Expr, anchor: str) -> exp.Expr | None:
    kind = _clock(node)
    day = exp.func("toDate", exp.Literal.string(anchor))
    if kind == "time":
        return exp.func("toDateTime", exp.Literal.string(f"{anchor} 23:59:59"))
    if kind == "yesterday":
        return exp.Sub(this=day, expression=exp.Literal.number(1))
    return day if kind == "date" else None


def pin_today(sql: str, anchor: str | None) -> str:
    """``sql`` with the clock functions replaced by ``anchor`` (``YYYY-MM-DD``); unchanged when there is
    no anchor, nothing to replace, or it does not parse (the guard reports that)."""
    if anchor is None:
        return sql
    try:
        tree = sqlglot.parse_one(sql, read="clickhouse")
    except SqlglotError:
        return sql
    changed = False

    def swap(node: exp.Expr) -> exp.Expr:
        nonlocal changed
        found = _replacement(node, anchor)
        if found is None:
            return node
        changed = True
        return found

    pinned = tree.transform(swap)
    return pinned.sql(dialect="clickhouse") if changed else sql
