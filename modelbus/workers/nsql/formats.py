"""NSQL responses by ``Accept``: JSON rows, Spice's vnd envelope, SQL only, CSV and an aligned text table.

Negotiation (Spice's rule, :func:`negotiate`): ``application/sql`` anywhere in the header means "the SQL
only, not executed"; otherwise the first recognised media type in header order wins; q-values and other
parameters are ignored; a missing, empty, wildcard or unknown header gives JSON.

How values are typed in JSON (``application/json`` rows, the vnd ``data``, and CSV cells where it applies):

- integers of every width (``UInt64``, ``Int128``, ... included) are JSON integers with all their digits;
- ``Decimal(P, S)`` values are JSON numbers with their exact decimal digits (``1234.50``), never floats;
- ``Float32/64`` are JSON numbers; NaN and infinities, which JSON cannot hold, are ``null``;
- ``Bool`` is ``true``/``false``; ``NULL`` is ``null``;
- ``Date``/``Date32`` are ``"YYYY-MM-DD"``; ``DateTime``/``DateTime64`` are ISO 8601
  (``"2024-01-02T03:04:05"``, with fractional seconds when the type has them, and ``Z``/an offset when the
  column type names a time zone);
- ``String``, ``Enum``, ``UUID``, ``IPv4``/``IPv6`` are strings; ``FixedString`` is decoded as UTF-8 with
  its zero padding removed;
- ``Array`` and ``Tuple`` are JSON arrays, ``Map`` is an object with string keys; their items follow the
  same rules.

Rows are objects keyed by column name, in column order; if two columns share a name the later one wins
(give computed columns distinct aliases).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import enum
import io
import ipaddress
import math
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from modelbus.runtime.clickhouse.engine import Column, QueryResult
from modelbus.schemas.nsql import ResponseFormat, negotiate

__all__ = (
    "ResponseFormat",
    "json_rows",
    "json_value",
    "negotiate",
    "render",
    "render_csv",
    "render_json",
    "render_sql",
    "render_text",
    "render_vnd",
)


# ---- values ----------------------------------------------------------------------------------------


def json_value(value: Any) -> Any:  # noqa: PLR0911 - one branch per kind of value
    """One value as a JSON-ready Python value (the typing rules of the module docstring)."""
    if value is None or isinstance(value, bool | str | decimal.Decimal | dt.date):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray):
        return bytes(value).rstrip(b"\x00").decode("utf-8", errors="replace")
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, dict):
        return {_key(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, enum.Enum):
        return json_value(value.value)
    return str(value)


def _key(key: Any) -> str:
    converted = json_value(key)
    return converted if isinstance(converted, str) else _encoder.encode(converted).decode()


_PASS_THROUGH_TYPES = [
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "UInt128",
    "UInt256",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Int128",
    "Int256",
    "Bool",
    "String",
    "Date",
    "Date32",
]


def _converter(column: Column) -> Callable[[Any], Any] | None:
    """A per-column conversion, or ``None`` when the decoded values are already JSON-ready."""
    base = column.base_type
    if base in _PASS_THROUGH_TYPES or base.startswith(("Decimal", "Enum", "DateTime")):
        return None
    return json_value


def json_rows(result: QueryResult) -> list[dict[str, Any]]:
    """The rows as objects keyed by column name, values typed for JSON."""
    names = [c.name for c in result.columns]
    converters = [_converter(c) for c in result.columns]
    if not any(converters):
        return [dict(zip(names, row, strict=True)) for row in result.rows]
    return [
        {name: (conv(v) if conv else v) for name, conv, v in zip(names, converters, row, strict=True)}
        for row in result.rows
    ]


_encoder = msgspec.json.Encoder(decimal_format="number")


def render_json(result: QueryResult) -> bytes:
    """``application/json``: a bare array of row objects."""
    return _encoder.encode(json_rows(result))


class _Field(msgspec.Struct):
    name: str
    data_type: str
    nullable: bool


class _Schema(msgspec.Struct):
    fields: list[_Field]


class _Envelope(msgspec.Struct, omit_defaults=True):
    row_count: int
    schema: _Schema
    data: list[dict[str, Any]]
    sql: str
    explanation: str | None = None


def render_vnd(result: QueryResult, sql: str, explanation: str | None = None) -> bytes:
    """``application/vnd.spiceai.nsql.v1+json``: ``{row_count, schema: {fields}, data, sql, explanation}``.

    ``data_type`` is the ClickHouse type without its ``Nullable``/``LowCardinality`` wrappers
    (``Decimal(38, 2)``, ``String``); ``nullable`` says whether the column can hold ``NULL``. Unlike
    Spice, ``schema.fields`` is filled even when there are no rows, and ``explanation`` says in one sentence
    what the SQL computes (:mod:`modelbus.workers.nsql.explain`; absent when it could not be derived).
    """
    fields = [_Field(c.name, c.base_type, c.nullable) for c in result.columns]
    envelope = _Envelope(
        row_count=len(result.rows),
        schema=_Schema(fields),
        data=json_rows(result),
        sql=sql,
        explanation=explanation,
    )
    return _encoder.encode(envelope)


def render_sql(sql: str) -> bytes:
    """``application/sql``: the validated statement, as text."""
    return sql.encode() + b"\n"


def _cell(value: Any) -> str:
    """A value as CSV/text cell text: ``NULL`` empty, booleans ``true``/``false``, dates ISO 8601,
    decimals exact, arrays/maps/tuples as JSON."""
    value = json_value(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | dict):
        return _encoder.encode(value).decode()
    return str(value)


def render_csv(result: QueryResult) -> bytes:
    """``text/csv``: RFC 4180 (a header row, CRLF line ends, fields quoted when they need it)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.name for c in result.columns])
    writer.writerows([_cell(v) for v in row] for row in result.rows)
    return out.getvalue().encode()


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, *, right: bool) -> str:
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill


_NUMERIC_PREFIXES = ("UInt", "Int", "Float", "Decimal")


def render_text(result: QueryResult) -> bytes:
    """``text/plain``: a bordered table, numbers right-aligned, other values left-aligned, ``NULL`` shown
    as ``NULL``; line breaks and tabs inside values are escaped so every row stays on one line."""
    headers = [c.name for c in result.columns]
    right = [c.base_type.startswith(_NUMERIC_PREFIXES) for c in result.columns]
    body = [
        [
            "NULL" if v is None else _cell(v).replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
            for v in row
        ]
        for row in result.rows
    ]
    widths = [max([_width(h), *(_width(r[i]) for r in body)]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str], align: Iterable[bool]) -> str:
        padded = (_pad(c, w, right=r) for c, w, r in zip(cells, widths, align, strict=True))
        return "| " + " | ".join(padded) + " |"

    lines = [rule, line(headers, [False] * len(headers)), rule]
    lines.extend(line(r, right) for r in body)
    if body:
        lines.append(rule)
    return ("\n".join(lines) + "\n").encode()


def render(
    fmt: ResponseFormat, result: QueryResult | None, sql: str, explanation: str | None = None
) -> bytes:
    """The response body for ``fmt``; ``result`` may be ``None`` only for :attr:`ResponseFormat.SQL`."""
    if fmt is ResponseFormat.SQL:
        return render_sql(sql)
    if result is None:
        raise ValueError(f"{fmt.value} needs a query result")
    if fmt is ResponseFormat.VND:
        return render_vnd(result, sql, explanation)
    if fmt is ResponseFormat.CSV:
        return render_csv(result)
    if fmt is ResponseFormat.TEXT:
        return render_text(result)
    return render_json(result)
