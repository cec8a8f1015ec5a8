"""How datasets relate: the joins a prompt describes, inferred from shared column names and keys.

Two tables join on a column they share when that column is a key of one of them (the "one" side: a
distinct value in every row, :attr:`TableSchema.unique_columns`, or its declared ``primary_key``) and not
of the other (the "many" side). Of several such columns the first key of the one side wins (``customer_id``
before ``customer_name``). Two tables that share a key of both (one to one) join on it too, the first given
table as the many side. Inference needs no configuration and can be wrong only in a direction the error
feedback corrects: a missed join leaves the model the columns alone, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from modelbus.workers.nsql.context import TableSchema

__all__ = ("Join", "infer_joins")


class Join(msgspec.Struct, frozen=True):
    """``many.many_column = one.one_column``: each row of ``many`` has at most one row of ``one``."""

    many: str
    many_column: str
    one: str
    one_column: str


def _join(many: TableSchema, one: TableSchema) -> Join | None:
    shared = {c.name for c in many.columns}
    for key in one.unique_columns:
        if key in shared and key not in many.unique_columns:
            return Join(many.name, key, one.name, key)
    return None


def infer_joins(schemas: Sequence[TableSchema]) -> list[Join]:
    """The joins between every pair of ``schemas``, in the order the tables are given."""
    joins: list[Join] = []
    for i, a in enumerate(schemas):
        for b in schemas[i + 1 :]:
            found = _join(a, b) or _join(b, a)
            if found is None:
                common = [k for k in a.unique_columns if k in b.unique_columns]
                found = Join(a.name, common[0], b.name, common[0]) if common else None
            if found is not None:
                joins.append(found)
    return joins
