"""Rendering by Accept, on real query results: JSON typing, Spice's vnd envelope, CSV, the text table, and
Accept negotiation."""

from __future__ import annotations

import csv
import decimal
import io
import json
import unicodedata

import pytest

from modelbus.runtime.clickhouse.engine import ClickHouse, QueryResult
from modelbus.workers.nsql.context import TableSchema
from modelbus.workers.nsql.executor import Executor
from modelbus.workers.nsql.formats import ResponseFormat, negotiate, render
from modelbus.workers.nsql.guard import Allowed, check
from tests.support.nsql_fixtures import TOP5_SQL, nsql_engine, sales_dataset, sales_schema

__all__ = ("nsql_engine", "sales_dataset", "sales_schema")

TYPES_SQL = """
SELECT
    toUInt64(18446744073709551615) AS u64,
    toInt64(-9223372036854775808) AS i64,
    toInt128('170141183460469231731687303715884105727') AS i128,
    toDecimal64('1234.50', 2) AS price,
    toDecimal128('-0.000001', 6) AS tiny,
    toDate('2024-02-29') AS day,
    toDate32('1900-01-01') AS old_day,
    toDateTime64('2024-01-02 03:04:05.123', 3, 'UTC') AS at_utc,
    CAST(NULL AS Nullable(Int32)) AS missing,
    CAST(7 AS Nullable(Int32)) AS present,
    true AS flag,
    nan AS not_a_number,
    1.5 AS ratio,
    'comma, "quote"' || char(10) || 'line 2' AS awkward,
    toFixedString('ab', 4) AS fixed,
    toUUID('123e4567-e89b-12d3-a456-426614174000') AS id,
    toIPv4('10.0.0.1') AS ip,
    [1, 2, 3] AS numbers,
    map('k', 1) AS mapping,
    tuple(1, 'a') AS pair,
    CAST('on' AS Enum8('off' = 0, 'on' = 1)) AS state,
    '東京' AS city
"""


async def run(engine: ClickHouse, sql: str, schemas: tuple[TableSchema, ...] = ()) -> tuple[QueryResult, str]:
    verdict = check(sql, {s.name: s.table for s in schemas})
    assert isinstance(verdict, Allowed), verdict
    result = await Executor(engine).execute(verdict)
    assert isinstance(result, QueryResult), result
    return result, verdict.sql


async def test_json_keeps_value_types(nsql_engine: ClickHouse) -> None:
    result, _ = await run(nsql_engine, TYPES_SQL)
    body = render(ResponseFormat.JSON, result, "ignored")
    assert b'"price":1234.50' in body  # exact decimal digits, as a number
    rows = json.loads(body, parse_float=decimal.Decimal)
    assert isinstance(rows, list)
    assert len(rows) == 1
    row = rows[0]
    assert list(row) == [c.name for c in result.columns]
    assert row["u64"] == 18446744073709551615
    assert row["i64"] == -9223372036854775808
    assert row["i128"] == 170141183460469231731687303715884105727
    assert row["price"] == decimal.Decimal("1234.50")
    assert row["tiny"] == decimal.Decimal("-0.000001")
    assert row["day"] == "2024-02-29"
    assert row["old_day"] == "1900-01-01"
    assert row["at_utc"].startswith("2024-01-02T03:04:05.123")
    assert row["at_utc"].endswith("Z")
    assert row["missing"] is None
    assert row["present"] == 7
    assert row["flag"] is True
    assert row["not_a_number"] is None
    assert row["ratio"] == decimal.Decimal("1.5")
    assert row["awkward"] == 'comma, "quote"\nline 2'
    assert row["fixed"] == "ab"
    assert row["id"] == "123e4567-e89b-12d3-a456-426614174000"
    assert row["ip"] == "10.0.0.1"
    assert row["numbers"] == [1, 2, 3]
    assert row["mapping"] == {"k": 1}
    assert row["pair"] == [1, "a"]
    assert row["state"] == "on"
    assert row["city"] == "東京"


async def test_vnd_envelope(nsql_engine: ClickHouse) -> None:
    result, sql = await run(nsql_engine, TYPES_SQL)
    envelope = json.loads(render(ResponseFormat.VND, result, sql), parse_float=decimal.Decimal)
    assert set(envelope) == {"row_count", "schema", "data", "sql"}  # no explanation given: none shown
    explained = json.loads(render(ResponseFormat.VND, result, sql, "Computes one row."))
    assert explained["explanation"] == "Computes one row."
    assert envelope["row_count"] == len(envelope["data"]) == 1
    assert envelope["sql"] == sql
    fields = {f["name"]: f for f in envelope["schema"]["fields"]}
    assert list(fields) == [c.name for c in result.columns]
    assert fields["price"] == {"name": "price", "data_type": "Decimal(18, 2)", "nullable": False}
    assert fields["missing"] == {"name": "missing", "data_type": "Int32", "nullable": True}
    assert fields["u64"]["data_type"] == "UInt64"
    assert envelope["data"][0]["price"] == decimal.Decimal("1234.50")


async def test_csv_round_trips(nsql_engine: ClickHouse) -> None:
    result, _ = await run(nsql_engine, TYPES_SQL)
    body = render(ResponseFormat.CSV, result, "ignored").decode()
    assert body.endswith("\r\n")
    header, row = list(csv.reader(io.StringIO(body, newline="")))
    assert header == [c.name for c in result.columns]
    cells = dict(zip(header, row, strict=True))
    assert cells["u64"] == "18446744073709551615"
    assert cells["price"] == "1234.50"
    assert cells["tiny"] == "-0.000001"
    assert cells["day"] == "2024-02-29"
    assert cells["missing"] == ""
    assert cells["present"] == "7"
    assert cells["flag"] == "true"
    assert cells["awkward"] == 'comma, "quote"\nline 2'
    assert cells["numbers"] == "[1,2,3]"
    assert cells["mapping"] == '{"k":1}'
    assert cells["city"] == "東京"


async def test_text_table_is_aligned(nsql_engine: ClickHouse, sales_schema: TableSchema) -> None:
    result, _ = await run(nsql_engine, TOP5_SQL, (sales_schema,))
    lines = render(ResponseFormat.TEXT, result, "ignored").decode().splitlines()
    assert len(lines) == 5 + 4  # rule, header, rule, 5 rows, rule
    assert len({len(line) for line in lines}) == 1
    assert lines[0] == lines[2] == lines[-1]
    assert set(lines[0]) == {"+", "-"}
    assert [c.strip() for c in lines[1].strip("|").split("|")] == [
        "customer_id",
        "customer_name",
        "total_sales",
    ]
    for line, row in zip(lines[3:-1], result.rows, strict=True):
        cells = line[1:-1].split("|")
        assert cells[0].endswith(f" {row[0]} ")  # numbers right-aligned
        assert cells[1].startswith(f" {row[1]} ")  # text left-aligned
        assert cells[2].strip() == str(row[2])


async def test_text_table_escapes_and_wide_characters(nsql_engine: ClickHouse) -> None:
    result, _ = await run(
        nsql_engine, "SELECT 'a' || char(10) || 'b' AS text, '東京' AS city, NULL AS nothing"
    )
    lines = render(ResponseFormat.TEXT, result, "ignored").decode().splitlines()
    assert len(lines) == 5
    assert "a\\nb" in lines[3]
    assert "NULL" in lines[3]
    # the two wide characters take four columns on a terminal, so the borders still line up there
    assert {display_width(line) for line in lines} == {len(lines[0])}
    assert [display_width(lines[3][:i]) for i, ch in enumerate(lines[3]) if ch == "|"] == [
        i for i, ch in enumerate(lines[0]) if ch == "+"
    ]


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


async def test_empty_results_keep_their_columns(nsql_engine: ClickHouse, sales_schema: TableSchema) -> None:
    result, sql = await run(
        nsql_engine, "SELECT order_id, total FROM sales_data WHERE order_id = 0", (sales_schema,)
    )
    assert result.rows == []
    assert [c.name for c in result.columns] == ["order_id", "total"]
    assert render(ResponseFormat.JSON, result, sql) == b"[]"
    envelope = json.loads(render(ResponseFormat.VND, result, sql))
    assert envelope["row_count"] == 0
    assert [f["name"] for f in envelope["schema"]["fields"]] == ["order_id", "total"]
    assert render(ResponseFormat.CSV, result, sql) == b"order_id,total\r\n"
    assert len(render(ResponseFormat.TEXT, result, sql).decode().splitlines()) == 3


def test_sql_only_renders_without_a_result() -> None:
    assert render(ResponseFormat.SQL, None, "SELECT 1") == b"SELECT 1\n"
    with pytest.raises(ValueError, match="needs a query result"):
        render(ResponseFormat.JSON, None, "SELECT 1")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, ResponseFormat.JSON),
        ("", ResponseFormat.JSON),
        ("*/*", ResponseFormat.JSON),
        ("text", ResponseFormat.JSON),  # the seed's example header: unknown, so JSON
        ("application/json", ResponseFormat.JSON),
        ("application/vnd.spiceai.nsql.v1+json", ResponseFormat.VND),
        ("application/vnd.spiceai.sql.v1+json", ResponseFormat.VND),  # Spice's other name for it
        ("text/csv", ResponseFormat.CSV),
        ("TEXT/PLAIN; charset=utf-8", ResponseFormat.TEXT),
        ("text/csv, text/plain", ResponseFormat.CSV),  # first recognised wins ...
        ("text/plain;q=0.1, text/csv;q=1.0", ResponseFormat.TEXT),  # ... whatever the q-values say
        ("image/png, text/csv", ResponseFormat.CSV),
        ("text/csv, application/sql", ResponseFormat.SQL),  # application/sql anywhere means SQL only
        ("application/sql;q=0.1", ResponseFormat.SQL),
    ],
)
def test_negotiate(accept: str | None, expected: ResponseFormat) -> None:
    assert negotiate(accept) is expected


def test_content_types() -> None:
    assert ResponseFormat.JSON.content_type == "application/json"
    assert ResponseFormat.VND.content_type == "application/vnd.spiceai.nsql.v1+json"
    assert ResponseFormat.CSV.content_type == "text/csv; charset=utf-8"
    assert not ResponseFormat.SQL.executes
    assert ResponseFormat.TEXT.executes
