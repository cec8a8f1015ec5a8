"""What to do about a failed statement, from the schemas: the error feedback a small model can act on.

Told only ClickHouse's message, a small model at temperature 0 repeats its mistake (measured: an unknown
``unit_cost`` asked of ``sales_data`` three times over). The commonest failures have a fix the schemas
know: a column that lives in another table needs that table joined (and the prompt's join says how); a
column neither grouped nor aggregated needs one of the two; an aggregate in ``WHERE`` belongs in ``HAVING``
or a subquery; ``sumIf`` takes its condition last. Hints are best effort: an error without one
is sent as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from modelbus.workers.nsql.context import TableSchema
from modelbus.workers.nsql.relations import infer_joins

__all__ = ("hint",)

ILLEGAL_TYPE_OF_ARGUMENT = 43
UNKNOWN_IDENTIFIER = 47
ILLEGAL_AGGREGATION = 184
NOT_AN_AGGREGATE = 215
_IDENTIFIER = re.compile(r"identifier [`'\"]?([A-Za-z_][\w.]*)", re.IGNORECASE)


def _unknown_column(message: str) -> str | None:
    found = _IDENTIFIER.search(message)
    return found.group(1).rsplit(".", 1)[-1] if found else None


def _join_hint(column: str, schemas: Sequence[TableSchema]) -> str | None:
    owners = [s for s in schemas if any(c.name == column for c in s.columns)]
    if not owners:
        names = ", ".join(f"`{s.name}`" for s in schemas)
        return f"There is no column `{column}` in {names}: use only the columns listed for them."
    owner = owners[0]
    for join in infer_joins(schemas):
        if owner.name in (join.one, join.many):
            other = join.many if owner.name == join.one else join.one
            return (
                f"`{column}` is a column of `{owner.name}`. Join it: FROM {other} JOIN {owner.name} ON "
                f"{join.one}.{join.one_column} = {join.many}.{join.many_column}, and write "
                f"{owner.name}.{column} (or its alias)."
            )
    return f"`{column}` is a column of `{owner.name}`, not of the tables the query reads."


def hint(code: int | None, message: str, schemas: Sequence[TableSchema]) -> str | None:
    """A sentence on how to fix the statement ClickHouse refused with ``code``, or None."""
    if code == UNKNOWN_IDENTIFIER and (column := _unknown_column(message)) is not None:
        return _join_hint(column, schemas)
    if code == ILLEGAL_AGGREGATION:
        return (
            "An aggregate cannot be in WHERE: filter groups with HAVING, or aggregate per entity in a "
            "subquery and filter or count its rows outside it."
        )
    if code == ILLEGAL_TYPE_OF_ARGUMENT and "If suffix" in message:
        return "The condition is the last argument: sumIf(value, condition), countIf(condition)."
    if code == NOT_AN_AGGREGATE:
        return (
            "Every selected column must be in GROUP BY or inside an aggregate: a value per row (such as a "
            "margin or a total) becomes sum(...) of it, and a column you group by goes in GROUP BY."
        )
    return None
