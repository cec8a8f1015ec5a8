"""The prompt for SQL generation: instructions, the relevant datasets' real schemas, and optional samples.

Schemas come from ``DESCRIBE TABLE`` on the engine; sample rows and the distinct values of low-cardinality
columns are read once per dataset (:func:`describe`) and kept in a :class:`TableSchema`, so building a
prompt per request is string work only.

When a request names more datasets than ``max_context_datasets``, only the most relevant go in: each is
scored by how many words of the question appear in its name, description and column names. All requested
datasets still may be queried; only the prompt is trimmed.

The model is asked for ``{"sql": "<statement>"}`` and nothing else; :data:`SQL_RESPONSE_SCHEMA` and
:data:`RESPONSE_FORMAT` constrain that where the model supports structured output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from workers.nsql.clickhouse import ClickHouse, base_type
from workers.nsql.datasets import Dataset
from workers.nsql.formats import json_value
from workers.nsql.names import TableRef, quote_identifier

__all__ = (
    "RESPONSE_FORMAT",
    "SQL_RESPONSE_SCHEMA",
    "ColumnInfo",
    "Message",
    "TableSchema",
    "build_messages",
    "describe",
    "describe_dataset",
    "pick_relevant",
    "retry_message",
    "system_prompt",
)

Message = dict[str, str]

SQL_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sql": {"type": "string", "description": "One ClickHouse SELECT statement"}},
    "required": ["sql"],
    "additionalProperties": False,
}

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "sql_query", "strict": True, "schema": SQL_RESPONSE_SCHEMA},
}

_DISTINCT_SCAN_ROWS = 100_000  # distinct values are taken from the first rows, not a full scan
_LOW_CARDINALITY = 50  # a text column with at most this many distinct values gets them listed
_TEXT_TYPES = ("String", "FixedString", "Enum", "Bool")


class ColumnInfo(msgspec.Struct, frozen=True):
    name: str
    type: str
    comment: str = ""


class TableSchema(msgspec.Struct, frozen=True, kw_only=True):
    """What the prompt says about one dataset."""

    name: str
    table: TableRef
    description: str | None = None
    columns: tuple[ColumnInfo, ...]
    sample_rows: tuple[dict[str, Any], ...] = ()
    distinct_values: dict[str, tuple[Any, ...]] = {}


def describe(
    client: Any,
    name: str,
    table: TableRef,
    description: str | None,
    *,
    sample_rows: int,
    distinct_values: int,
) -> TableSchema:
    """Read a table's schema, a few rows and the values of its low-cardinality text columns (blocking,
    on a trusted client)."""
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
    values: dict[str, tuple[Any, ...]] = {}
    text_columns = [c.name for c in columns if base_type(c.type).startswith(_TEXT_TYPES)]
    if distinct_values and text_columns:
        selects = ", ".join(
            f"uniq({quote_identifier(c)}), topK({int(distinct_values)})({quote_identifier(c)})"
            for c in text_columns
        )
        scan = f"SELECT * FROM {table.sql} LIMIT {_DISTINCT_SCAN_ROWS}"  # noqa: S608 - quoted name
        found = client.query(f"SELECT {selects} FROM ({scan})")  # noqa: S608 - quoted names
        if found.result_rows:
            stats = found.result_rows[0]
            for i, column in enumerate(text_columns):
                uniques, top = stats[2 * i], stats[2 * i + 1]
                if 0 < int(uniques) <= _LOW_CARDINALITY:
                    values[column] = tuple(json_value(v) for v in top)
    return TableSchema(
        name=name,
        table=table,
        description=description,
        columns=columns,
        sample_rows=rows,
        distinct_values=values,
    )


async def describe_dataset(
    engine: ClickHouse, dataset: Dataset, *, sample_rows: int = 3, distinct_values: int = 10
) -> TableSchema:
    """:func:`describe` for a ready dataset, in a worker thread."""
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
        )
    )


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    words = set()
    for word in _WORD.findall(text.lower()):
        words.add(word)
        if len(word) > 3 and word.endswith("s"):
            words.add(word[:-1])
    return words


def pick_relevant(question: str, schemas: Sequence[TableSchema], limit: int) -> list[TableSchema]:
    """The ``limit`` datasets that share most words with the question (ties keep the given order)."""
    if len(schemas) <= limit:
        return list(schemas)
    asked = _words(question)

    def score(schema: TableSchema) -> int:
        text = " ".join([schema.name.replace("_", " "), schema.description or ""])
        text += " " + " ".join(c.name.replace("_", " ") for c in schema.columns)
        return len(asked & _words(text))

    ranked = sorted(enumerate(schemas), key=lambda item: (-score(item[1]), item[0]))
    return [schema for _, schema in ranked[:limit]]


def system_prompt(max_rows: int) -> str:
    return f"""You translate questions about data into one ClickHouse SQL query.

Answer with a JSON object and nothing else: {{"sql": "<the query>"}}. No prose, no code fences.

Rules for the query:
- ClickHouse SQL dialect. One read-only statement: SELECT, optionally with WITH (CTEs) and UNION ALL.
  No semicolon, no comments, no SETTINGS, FORMAT or INTO OUTFILE clauses.
- Use only the tables described below, by the names shown, and only their columns.
  No system tables and no table functions (numbers(), file(), url(), ...).
- Identifiers are case-sensitive. Quote an identifier that has capitals, spaces or other special
  characters with backticks, e.g. `Order Date`. String literals use single quotes.
- For "top N" questions use ORDER BY ... DESC LIMIT N. When listing rows, add a LIMIT:
  at most {max_rows} rows can be returned.
- Give computed columns short snake_case aliases (total_sales, order_count).
- A question about a total per customer, product, region, ... ("top customers by total sales") needs
  sum(...) with GROUP BY: select the entity's id and name and the sum, and GROUP BY every selected column
  that is not aggregated, e.g. SELECT customer_id, customer_name, sum(total) AS total_sales FROM t
  GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5."""  # noqa: S608 - a prompt, not a query


def _table_block(schema: TableSchema, *, samples: bool) -> str:
    lines = [f"### Table `{schema.name}`"]
    if schema.description:
        lines.append(schema.description)
    lines += ["", "| column | type | description |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.type} | {c.comment} |" for c in schema.columns]
    if samples and schema.distinct_values:
        lines += ["", f"Distinct values in `{schema.name}` (most frequent first):"]
        for column, values in schema.distinct_values.items():
            shown = ", ".join(msgspec.json.encode(v).decode() for v in values)
            lines.append(f"- {column}: {shown}")
    if samples and schema.sample_rows:
        lines += ["", f"Example rows of `{schema.name}` (JSON):"]
        lines += [_encode_row(row) for row in schema.sample_rows]
    return "\n".join(lines)


_row_encoder = msgspec.json.Encoder(decimal_format="number")


def _encode_row(row: dict[str, Any]) -> str:
    return _row_encoder.encode(row).decode()


def build_messages(
    question: str,
    schemas: Sequence[TableSchema],
    *,
    sample_data_enabled: bool = False,
    max_rows: int = 10_000,
    max_context_datasets: int = 4,
) -> list[Message]:
    """The chat messages that ask for the SQL: instructions, then the relevant tables and the question."""
    chosen = pick_relevant(question, schemas, max_context_datasets)
    tables = "\n\n".join(_table_block(s, samples=sample_data_enabled) for s in chosen)
    user = f"## Tables\n\n{tables}\n\n## Question\n\n{question.strip()}"
    return [{"role": "system", "content": system_prompt(max_rows)}, {"role": "user", "content": user}]


def retry_message(sql: str, error: str) -> Message:
    """What the model is told after its statement failed, so that it can write a corrected one."""
    return {
        "role": "user",
        "content": (
            "That query failed.\n"
            f"SQL: {sql}\n"
            f"Error: {error}\n"
            'Write a corrected query for the same question. Answer with {"sql": "..."} only.'
        ),
    }
