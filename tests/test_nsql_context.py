"""The prompt for SQL generation: real schemas, samples only when asked, and only the relevant datasets."""

from __future__ import annotations

import msgspec

from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.clickhouse.names import TableRef
from modelbus.workers.nsql.context import ColumnInfo, TableSchema, describe_dataset
from modelbus.workers.nsql.datasets import Dataset
from modelbus.workers.nsql.prompt import (
    RESPONSE_FORMAT,
    SQL_RESPONSE_SCHEMA,
    build_messages,
    pick_relevant,
    retry_message,
)
from tests.support.nsql_fixtures import nsql_engine, sales_dataset, sales_schema

__all__ = ("nsql_engine", "sales_dataset", "sales_schema")

QUESTION = "Get the top 5 customers by total sales"


def test_the_schema_is_the_real_one(sales_schema: TableSchema) -> None:
    assert [(c.name, c.type) for c in sales_schema.columns] == [
        ("order_id", "UInt64"),
        ("order_date", "Date"),
        ("customer_id", "UInt32"),
        ("customer_name", "LowCardinality(String)"),
        ("product", "LowCardinality(String)"),
        ("category", "LowCardinality(String)"),
        ("region", "LowCardinality(String)"),
        ("quantity", "UInt16"),
        ("unit_price", "Decimal(10, 2)"),
        ("total", "Decimal(18, 2)"),
    ]
    # distinct values for low-cardinality columns only (2,000 customer names are not listed)
    assert set(sales_schema.distinct_values) == {"product", "category", "region"}
    assert set(sales_schema.distinct_values["region"]) == {
        "North America",
        "Europe",
        "Asia Pacific",
        "Latin America",
        "Middle East & Africa",
    }
    assert len(sales_schema.sample_rows) == 3
    assert set(sales_schema.sample_rows[0]) == {c.name for c in sales_schema.columns}


async def test_describe_dataset_runs_on_the_engine(nsql_engine: ClickHouse, sales_dataset: Dataset) -> None:
    schema = await describe_dataset(nsql_engine, sales_dataset, sample_rows=0, distinct_values=0)
    assert schema.name == "sales_data"
    assert schema.sample_rows == ()
    assert schema.distinct_values == {}
    assert schema.description == sales_dataset.description
    assert len(schema.columns) == 10


def test_sample_rows_go_in_only_when_enabled(sales_schema: TableSchema) -> None:
    plain = build_messages(QUESTION, [sales_schema])
    assert [m["role"] for m in plain] == ["system", "user"]
    assert "ClickHouse" in plain[0]["content"]
    assert '{"sql": "<the query>"}' in plain[0]["content"]
    user = plain[1]["content"]
    assert "### Table `sales_data`" in user
    assert "| unit_price | Decimal(10, 2) |" in user
    assert user.rstrip().endswith(QUESTION)
    assert "Example rows" not in user
    # grounded in the data either way: the values of a low-cardinality column and each date's range
    assert '"Middle East & Africa"' in user.split("| region |", 1)[1].split("\n", 1)[0]
    assert "| order_date | Date | from 2022-01-01 to 2025-12-31 |" in user

    sampled = build_messages(QUESTION, [sales_schema], sample_data_enabled=True)[1]["content"]
    assert "Example rows of `sales_data`" in sampled
    encoder = msgspec.json.Encoder(decimal_format="number")
    for row in sales_schema.sample_rows:  # JSON objects, one a line, decimals as numbers
        assert f"\n{encoder.encode(row).decode()}" in sampled


def test_the_row_limit_is_in_the_instructions(sales_schema: TableSchema) -> None:
    system = build_messages(QUESTION, [sales_schema], max_rows=1234)[0]["content"]
    assert "at most 1234 rows" in system


def fake(name: str, description: str, *columns: str) -> TableSchema:
    return TableSchema(
        name=name,
        table=TableRef("db", name),
        description=description,
        columns=tuple(ColumnInfo(c, "String") for c in columns),
    )


def test_only_relevant_datasets_go_in_when_there_are_many() -> None:
    schemas = [
        fake("web_logs", "HTTP access logs", "path", "status"),
        fake("inventory", "Stock per warehouse", "sku", "warehouse", "units"),
        fake("orders", "Customer orders and their totals", "customer_id", "total"),
        fake("employees", "Staff directory", "name", "team"),
        fake("customers", "Customer master data", "customer_id", "customer_name", "region"),
        fake("weather", "Daily weather", "city", "temp"),
    ]
    picked = pick_relevant(QUESTION, schemas, limit=2)
    assert [s.name for s in picked] == ["orders", "customers"]
    assert pick_relevant(QUESTION, schemas, limit=10) == schemas  # few enough: all of them, in order

    user = build_messages(QUESTION, schemas, max_context_datasets=2)[1]["content"]
    assert "`orders`" in user
    assert "`customers`" in user
    assert "web_logs" not in user
    assert "weather" not in user


def test_structured_output_schema() -> None:
    assert SQL_RESPONSE_SCHEMA["required"] == ["sql"]
    assert SQL_RESPONSE_SCHEMA["additionalProperties"] is False
    assert RESPONSE_FORMAT["type"] == "json_schema"
    assert RESPONSE_FORMAT["json_schema"]["schema"] is SQL_RESPONSE_SCHEMA


def test_retry_message_carries_the_sql_and_the_error() -> None:
    message = retry_message("SELECT nope FROM t", "Unknown identifier nope")
    assert message["role"] == "user"
    assert "SELECT nope FROM t" in message["content"]
    assert "Unknown identifier nope" in message["content"]
