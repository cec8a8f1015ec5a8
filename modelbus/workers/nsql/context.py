"""What the prompt knows about a dataset, read once from the engine: schema, data ranges, keys, examples.

``describe`` reads ``DESCRIBE TABLE``, a few sample rows, the distinct values of low-cardinality text
columns, each date column's range and which columns hold a distinct value in every row (join keys), and
keeps them in a :class:`TableSchema`, so that building a prompt per request is string work only
(:mod:`modelbus.workers.nsql.prompt`). Statistics come from the first rows of big tables, not a full scan; the
date ranges are exact (``min``/``max`` are cheap on ClickHouse's columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from modelbus.config.model import DatasetExample
from modelbus.runtime.clickhouse.engine import ClickHouse, base_type
from modelbus.runtime.clickhouse.names import TableRef, quote_identifier
from modelbus.workers.nsql.datasets import Dataset
from modelbus.workers.nsql.formats import json_value

__all__ = (
    "ColumnInfo",
    "DateRange",
    "Example",
    "Message",
    "TableSchema",
    "describe",
    "describe_dataset",
)

Message = dict[str, str]

_SCAN_ROWS = 100_000  # distinct values and keys are taken from the first rows, not a full scan
_LOW_CARDINALITY = 50  # a text column with at most this many distinct values gets them listed
_TEXT_TYPES = ("String", "FixedString", "Enum", "Bool")
_DATE_TYPES = ("Date", "DateTime")
_KEY_TYPES = ("String", "FixedString", "UInt", "Int")  # a column of another type is never a join key


class ColumnInfo(msgspec.Struct, frozen=True):
    name: str
    type: str
    comment: str = ""


class DateRange(msgspec.Struct, frozen=True):
    """The first and last value of a date column, as ISO text (``2025-12-31``)."""

    first: str
    last: str


Example = DatasetExample  # a worked example for the prompt: a question and the SQL that answers it


class TableSchema(msgspec.Struct, frozen=True, kw_only=True):
    """What the prompt says about one dataset."""

    name: str
    table: TableRef
    description: str | None = None
    columns: tuple[ColumnInfo, ...]
    sample_rows: tuple[dict[str, Any], ...] = ()
    distinct_values: dict[str, tuple[Any, ...]] = {}  # the most frequent first
    more_values: tuple[str, ...] = ()  # columns with more distinct values than listed
    date_ranges: dict[str, DateRange] = {}
    unique_columns: tuple[str, ...] = ()  # a distinct non-null value in every row scanned: keys
    examples: tuple[Example, ...] = ()


def _iso(value: Any) -> str:
    text = str(value)
    return text[:10] if text.endswith("00:00:00") else text


def describe(
    client: Any,
    name: str,
    table: TableRef,
    description: str | None,
    *,
    sample_rows: int,
    distinct_values: int,
    examples: Sequence[Example] = (),
    primary_key: str | None = None,
) -> TableSchema:
    """Read a table's schema and the statistics the prompt gives (blocking, on a trusted client).

    A declared ``primary_key`` is the table's first key whatever the rows scanned say."""
    described = client.query(f"DESCRIBE TABLE {table.sql}").result_rows
    columns = tuple(
        ColumnInfo(name=str(row[0]), type=str(row[1]), comment=str(row[4] or "")) for row in described
    )
    rows: tuple[dict[str, Any], ...] = ()
    if sample_rows:
        result = client.query(f"SELECT * FROM {table.sql} LIMIT {int(sample_rows)}")  # noqa: S608 - quoted name
        rows = tuple(
            {n: json_value(v) for n, v in zip(result.column_names, row, strict=True)}
            for row in result.result_rows
        )
    values, more = _distinct_values(client, table, columns, distinct_values)
    return TableSchema(
        name=name,
        table=table,
        description=description,
        columns=columns,
        sample_rows=rows,
        distinct_values=values,
        more_values=more,
        date_ranges=_date_ranges(client, table, columns),
        unique_columns=_keys(client, table, columns, primary_key),
        examples=tuple(examples),
    )


def _distinct_values(
    client: Any, table: TableRef, columns: Sequence[ColumnInfo], top: int
) -> tuple[dict[str, tuple[Any, ...]], tuple[str, ...]]:
    text_columns = [c.name for c in columns if base_type(c.type).startswith(_TEXT_TYPES)]
    if not top or not text_columns:
        return {}, ()
    selects = ", ".join(
        f"uniq({quote_identifier(c)}), topK({int(top)})({quote_identifier(c)})" for c in text_columns
    )
    scan = f"SELECT * FROM {table.sql} LIMIT {_SCAN_ROWS}"  # noqa: S608 - quoted name
    found = client.query(f"SELECT {selects} FROM ({scan})")  # noqa: S608 - quoted names
    values: dict[str, tuple[Any, ...]] = {}
    more: list[str] = []
    if found.result_rows:
        stats = found.result_rows[0]
        for i, column in enumerate(text_columns):
            uniques, most = stats[2 * i], stats[2 * i + 1]
            if 0 < int(uniques) <= _LOW_CARDINALITY:
                values[column] = tuple(json_value(v) for v in most)
                if int(uniques) > len(most):
                    more.append(column)
    return values, tuple(more)


def _date_ranges(client: Any, table: TableRef, columns: Sequence[ColumnInfo]) -> dict[str, DateRange]:
    dates = [c.name for c in columns if base_type(c.type).startswith(_DATE_TYPES)]
    if not dates:
        return {}
    selects = ", ".join(f"min({quote_identifier(c)}), max({quote_identifier(c)})" for c in dates)
    found = client.query(f"SELECT {selects} FROM {table.sql}")  # noqa: S608 - quoted names
    if not found.result_rows:
        return {}
    stats = found.result_rows[0]
    return {c: DateRange(_iso(stats[2 * i]), _iso(stats[2 * i + 1])) for i, c in enumerate(dates)}


def _keys(
    client: Any, table: TableRef, columns: Sequence[ColumnInfo], primary_key: str | None
) -> tuple[str, ...]:
    found = _unique_columns(client, table, columns)
    if primary_key is None:
        return found
    return (primary_key, *(c for c in found if c != primary_key))


def _unique_columns(client: Any, table: TableRef, columns: Sequence[ColumnInfo]) -> tuple[str, ...]:
    keys = [c.name for c in columns if base_type(c.type).startswith(_KEY_TYPES)]
    if not keys:
        return ()
    selects = ", ".join(f"uniqExact({quote_identifier(c)})" for c in keys)
    scan = f"SELECT * FROM {table.sql} LIMIT {_SCAN_ROWS}"  # noqa: S608 - quoted name
    found = client.query(f"SELECT count(), {selects} FROM ({scan})")  # noqa: S608 - quoted names
    if not found.result_rows or not found.result_rows[0][0]:
        return ()
    total, *uniques = found.result_rows[0]
    return tuple(c for c, n in zip(keys, uniques, strict=True) if int(n) == int(total))


async def describe_dataset(
    engine: ClickHouse,
    dataset: Dataset,
    *,
    sample_rows: int = 3,
    distinct_values: int = 10,
) -> TableSchema:
    """:func:`describe` for a ready dataset (with its examples and declared key), in a worker thread."""
    table = dataset.table
    if table is None:
        raise ValueError(f"dataset {dataset.name!r} is not ready")
    return await engine.run_admin(
        lambda client: describe(
            client,
            dataset.name,
            table,
            dataset.description,
            sample_rows=sample_rows,
            distinct_values=distinct_values,
            examples=dataset.examples,
            primary_key=dataset.primary_key,
        )
    )
