"""The SQL of an answer in one sentence, read from the statement itself, for the vnd envelope.

Why not ask the model: a model's account of its own query can be wrong in exactly the cases a user needs
it (it says "revenue in 2024" over a query that filters one day), and it costs tokens. This sentence is
derived from the parsed statement that ran, so it says what was computed: the values, the tables and how
they join, the filter, the grouping, the order and the limit, e.g. "sum(total) as revenue per region,
from sales_data, where toYear(order_date) = 2024, highest revenue first, top 5 rows."
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

__all__ = ("explain",)

_DIALECT = "clickhouse"
_MAX_PART = 120  # characters of one clause before it is shortened


def _text(node: exp.Expr) -> str:
    text = node.sql(dialect=_DIALECT)
    return text if len(text) <= _MAX_PART else text[: _MAX_PART - 3] + "..."


def _value(node: exp.Expr) -> str:
    if isinstance(node, exp.Star):
        return "every column"
    if isinstance(node, exp.Alias):
        inner = node.this
        if isinstance(inner, exp.Column) and inner.name == node.alias:
            return node.alias
        return f"{_text(inner)} as {node.alias}"
    return _text(node)


def _source(node: exp.Expr | None) -> str:
    if isinstance(node, exp.Table):
        return node.name
    if isinstance(node, exp.Subquery):
        inner = node.this
        tables = sorted({t.name for t in inner.find_all(exp.Table)}) if inner is not None else []
        return "a subquery over " + ", ".join(tables) if tables else "a subquery"
    return _text(node) if node is not None else "no table"


def _from(select: exp.Select) -> str:
    parts = [_source(select.args["from_"].this if select.args.get("from_") else None)]
    for join in select.args.get("joins") or []:
        on = join.args.get("on")
        parts.append(f"joined with {_source(join.this)}" + (f" on {_text(on)}" if on is not None else ""))
    return "from " + " ".join(parts)


def _order(select: exp.Select) -> str | None:
    order = select.args.get("order")
    if order is None:
        return None
    keys = []
    for key in order.expressions:
        name = _text(key.this)
        keys.append(f"highest {name} first" if key.args.get("desc") else f"by {name}")
    return ", ".join(keys)


def _select_sentence(select: exp.Select) -> str:
    group = select.args.get("group")
    grouped = [_text(g) for g in group.expressions] if group is not None else []
    values = [_value(e) for e in select.expressions]
    shown = [v for v in values if v not in grouped]
    clauses = [", ".join(shown or values) + (f" per {', '.join(grouped)}" if grouped else ""), _from(select)]
    if (where := select.args.get("where")) is not None:
        clauses.append(f"where {_text(where.this)}")
    if (having := select.args.get("having")) is not None:
        clauses.append(f"keeping groups where {_text(having.this)}")
    if (order := _order(select)) is not None:
        clauses.append(order)
    if (limit := select.args.get("limit")) is not None and limit.expression is not None:
        count = _text(limit.expression)
        clauses.append(f"top {count} rows" if order else f"at most {count} rows")
    return ", ".join(clauses)


def explain(sql: str, anchor: str | None = None) -> str | None:
    """One sentence on what ``sql`` computes, or None when it does not parse. ``anchor``: the date the
    clock functions were pinned to (:mod:`modelbus.workers.nsql.anchor`), said when the statement uses it."""
    try:
        tree = sqlglot.parse_one(sql, read=_DIALECT)
    except SqlglotError:
        return None
    if isinstance(tree, exp.SetOperation):
        tables = sorted({t.name for t in tree.find_all(exp.Table)})
        over = f" over {', '.join(tables)}" if tables else ""
        sentence = f"The {type(tree).__name__.lower()} of several queries{over}"
    elif isinstance(tree, exp.Select):
        sentence = "Computes " + _select_sentence(tree)
    else:
        return None
    if anchor is not None and f"'{anchor}" in sql:
        sentence += f"; dates relative to {anchor}, the data's latest date"
    return sentence + "."
