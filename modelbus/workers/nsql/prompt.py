"""The prompt for SQL generation: ClickHouse rules, the relevant tables grounded in their data, worked
examples, and the question last.

What a small model gets wrong decides what is here (measured on ``evals/nsql``'s dev half):

- dialect: MySQL date functions, a month written as one day, ``LIKE`` on dates, invented quantile
  functions. The rules list ClickHouse's own idioms for dates, distinct counts, quantiles and text.
- dates: each date column's range, and the date relative words count from: the data's latest date, not
  the clock (data that ends in 2025 has no "last 30 days" from today). The anchor is in the prompt, and
  :func:`modelbus.workers.nsql.anchor.pin_today` writes it into the SQL wherever the model still used
  ``today()``.
- joins: how the tables relate (:mod:`modelbus.workers.nsql.relations`) and which columns only the other table
  has.
- worked examples per dataset, only those whose tables are all in the prompt.

Everything before the question depends only on the set of tables, so the engine's prompt cache serves it
across requests. When a request names more datasets than ``max_context_datasets``, only the most relevant
go in (:func:`pick_relevant`); every requested dataset may still be queried.

The model answers ``{"sql": "<statement>"}``; :data:`RESPONSE_FORMAT` constrains that where the model
supports structured output.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from modelbus.workers.nsql.context import Example, Message, TableSchema
from modelbus.workers.nsql.relations import Join, infer_joins

__all__ = (
    "RESPONSE_FORMAT",
    "SQL_RESPONSE_SCHEMA",
    "anchor_date",
    "build_messages",
    "column_note",
    "pick_relevant",
    "retry_message",
    "system_prompt",
)

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

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    words = set()
    for word in _WORD.findall(text.lower()):
        words.add(word)
        if len(word) > 3 and word.endswith("s"):
            words.add(word[:-1])
    return words


def pick_relevant(question: str, schemas: Sequence[TableSchema], limit: int) -> list[TableSchema]:
    """The ``limit`` datasets that share most words with the question (ties keep the given order).

    A dataset's words are its name, description, column names and listed values."""
    if len(schemas) <= limit:
        return list(schemas)
    asked = _words(question)

    def score(schema: TableSchema) -> int:
        text = " ".join([schema.name.replace("_", " "), schema.description or ""])
        text += " " + " ".join(c.name.replace("_", " ") for c in schema.columns)
        text += " " + " ".join(str(v) for values in schema.distinct_values.values() for v in values)
        return len(asked & _words(text))

    ranked = sorted(enumerate(schemas), key=lambda item: (-score(item[1]), item[0]))
    return [schema for _, schema in ranked[:limit]]


def system_prompt(max_rows: int) -> str:
    return f"""You write one ClickHouse SQL query that answers a question about the tables you are given.

Answer with a JSON object and nothing else: {{"sql": "<the query>"}}. No prose, no code fences.

The query:
- One read-only statement: SELECT, optionally with WITH (CTEs) and UNION ALL. No semicolon, no comments,
  no SETTINGS, FORMAT or INTO OUTFILE. No system tables, no table functions (numbers(), file(), url()).
- Only the tables and columns you are given, by the names shown. Identifiers are case-sensitive; quote
  unusual ones with backticks (`Order Date`). String literals use single quotes.
- It is ClickHouse, not MySQL: no YEAR(), MONTH(), CURDATE(), NOW() - INTERVAL, DATE_SUB(), DATE_FORMAT(),
  EXTRACT() or LIKE on a date.

ClickHouse idioms:
- A year: toYear(d) = 2024. A month: d >= '2024-03-01' AND d < '2024-04-01'. A quarter: toYear(d) = 2024
  AND toQuarter(d) = 2. A day: d = '2024-03-15'. Never compare a date with one day to mean a month or year.
  Per month: GROUP BY toStartOfMonth(d) (the first day) or toMonth(d) (the month number).
- Counting: count() rows, uniqExact(x) distinct values, countIf(cond) rows that match.
- sum(x), avg(x), min(x), max(x). The median: medianExact(x); the 90th percentile: quantileExact(0.9)(x)
  (median() and quantile() are approximate).
- A percentage: 100 * sumIf(x, cond) / sum(x) (the condition last), or 100 * countIf(cond) / count().
  A ratio of Decimal columns keeps only their decimals: divide toFloat64(...) values.
- Text: col = 'Value' with a value listed for that column; col ILIKE '%part%' for a partial match.
- A running total: sum(v) OVER (ORDER BY k) over a grouped subquery.

Shape of the answer:
- A total, count or average per customer, product, region, ...: GROUP BY every selected column that is
  not aggregated, and filter the groups with HAVING. Select the entity's name and the value.
- Something per day or per customer, then averaged or counted: aggregate in a subquery first.
- "Top N" and "which ... the most": ORDER BY the value DESC LIMIT N (LIMIT 1 for one).
- Listing rows: add a LIMIT; at most {max_rows} rows can be returned.
- Computed columns get short snake_case aliases (total_sales, order_count).
- With a JOIN: give each table a short alias and qualify every column (s.total, c.segment)."""


def anchor_date(schemas: Sequence[TableSchema]) -> str | None:
    """The date relative words count from: the latest value of any date column in ``schemas``."""
    lasts = [r.last for s in schemas for r in s.date_ranges.values()]
    return max(lasts) if lasts else None


def _dates_block(anchor: str) -> str:
    year, month = int(anchor[:4]), anchor[:7]
    return (
        f"## Dates\n\nThe data ends on {anchor}. Count relative dates from there, not from today() or the "
        f"clock: this year and the latest year of data are {year}, last year is {year - 1}, this month is "
        f"{month}, the last 30 days are the 30 days up to {anchor}. Write such dates as literals."
    )


def column_note(schema: TableSchema, column: str, comment: str) -> str:
    notes = [comment] if comment else []
    if (dates := schema.date_ranges.get(column)) is not None:
        notes.append(f"from {dates.first} to {dates.last}")
    if (values := schema.distinct_values.get(column)) is not None:
        shown = ", ".join(msgspec.json.encode(v).decode() for v in values)
        notes.append(f"values include {shown}" if column in schema.more_values else f"values: {shown}")
    if column in schema.unique_columns and schema.unique_columns[0] == column:
        notes.append("one row per value")
    return "; ".join(notes)


def _table_block(schema: TableSchema, *, samples: bool) -> str:
    lines = [f"### Table `{schema.name}`"]
    if schema.description:
        lines.append(schema.description)
    lines += ["", "| column | type | notes |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.type} | {column_note(schema, c.name, c.comment)} |" for c in schema.columns]
    if samples and schema.sample_rows:
        lines += ["", f"Example rows of `{schema.name}` (JSON):"]
        lines += [_encode_row(row) for row in schema.sample_rows]
    return "\n".join(lines)


def _joins_block(joins: Sequence[Join], schemas: Sequence[TableSchema]) -> str:
    by_name = {s.name: s for s in schemas}
    lines = ["## How the tables join", ""]
    for join in joins:
        many, one = by_name[join.many], by_name[join.one]
        in_many = {c.name for c in many.columns}
        only = [c.name for c in one.columns if c.name not in in_many]
        lines.append(
            f"- `{join.many}` JOIN `{join.one}` ON "
            f"{join.one}.{join.one_column} = {join.many}.{join.many_column} "
            f"(each {join.many} row has at most one {join.one} row)."
            + (f" Columns only in {join.one}: {', '.join(only)}." if only else "")
        )
    return "\n".join(lines)


_row_encoder = msgspec.json.Encoder(decimal_format="number")


def _encode_row(row: dict[str, Any]) -> str:
    return _row_encoder.encode(row).decode()


@functools.lru_cache(maxsize=1024)
def _tables_of(sql: str) -> frozenset[str] | None:
    """The tables an example reads; parsed once per example, not once per request."""
    try:
        tree = sqlglot.parse_one(sql, read="clickhouse")
    except SqlglotError:
        return None
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    return frozenset(t.name for t in tree.find_all(exp.Table) if t.name not in ctes)


def _examples(schemas: Sequence[TableSchema]) -> list[Example]:
    names = {s.name for s in schemas}
    chosen: list[Example] = []
    for schema in schemas:
        for example in schema.examples:
            tables = _tables_of(example.sql)
            if tables is not None and tables <= names and example not in chosen:
                chosen.append(example)
    return chosen


def _examples_block(examples: Sequence[Example]) -> str:
    lines = ["## Examples", ""]
    for example in examples:
        lines.append(f"Question: {example.question}")
        lines.append(msgspec.json.encode({"sql": example.sql}).decode())
        lines.append("")
    return "\n".join(lines).rstrip()


def build_messages(
    question: str,
    schemas: Sequence[TableSchema],
    *,
    sample_data_enabled: bool = False,
    max_rows: int = 10_000,
    max_context_datasets: int = 4,
) -> list[Message]:
    """The chat messages that ask for the SQL: rules, then the relevant tables, examples, the question."""
    chosen = pick_relevant(question, schemas, max_context_datasets)
    blocks = ["## Tables", *(_table_block(s, samples=sample_data_enabled) for s in chosen)]
    if joins := infer_joins(chosen):
        blocks.append(_joins_block(joins, chosen))
    if (anchor := anchor_date(chosen)) is not None:
        blocks.append(_dates_block(anchor))
    if examples := _examples(chosen):
        blocks.append(_examples_block(examples))
    blocks += ["## Question", question.strip()]
    return [
        {"role": "system", "content": system_prompt(max_rows)},
        {"role": "user", "content": "\n\n".join(blocks)},
    ]


def retry_message(sql: str, error: str, fix: str | None = None) -> Message:
    """What the model is told after its statement failed (with how to fix it when that is known), so that
    it can write a corrected one."""
    how = f"How to fix it: {fix}\n" if fix else ""
    return {
        "role": "user",
        "content": (
            "That query failed.\n"
            f"SQL: {sql}\n"
            f"Error: {error}\n"
            f"{how}"
            'Write a corrected query for the same question. Answer with {"sql": "..."} only.'
        ),
    }
