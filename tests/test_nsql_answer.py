"""The retry loop on the real engine with a scripted model: right answers, SQL-only without execution,
retries that carry the failed SQL and its error, and the final failure."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.workers.nsql.context import TableSchema
from modelbus.workers.nsql.executor import ErrorKind, Executor
from modelbus.workers.nsql.generate import REFUSED, Answered, Failed, answer, extract_sql
from tests.support.nsql_fixtures import (
    TOP5_SQL,
    ScriptedModel,
    admin_rows,
    nsql_engine,
    sales_dataset,
    sales_schema,
)

__all__ = ("nsql_engine", "sales_dataset", "sales_schema")

QUESTION = "Get the top 5 customers by total sales"


def as_json(sql: str) -> str:
    return msgspec.json.encode({"sql": sql}).decode()


def reference(engine: ClickHouse, sql: str) -> list[tuple[object, ...]]:
    """The hand-written query run directly on the trusted client, without the sample's projection."""
    return admin_rows(engine, f"{sql} SETTINGS optimize_use_projections = 0")


@pytest.mark.parametrize(
    "reply",
    [
        as_json(TOP5_SQL),
        f"```json\n{as_json(TOP5_SQL)}\n```",
        f"Sure! Here is the query:\n{as_json(TOP5_SQL)}",
        f"```sql\n{TOP5_SQL};\n```",
        TOP5_SQL,
    ],
    ids=["json", "fenced-json", "json-in-prose", "fenced-sql", "plain-sql"],
)
async def test_top5_matches_the_hand_written_query(
    reply: str, nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    model = ScriptedModel([reply])
    outcome = await answer(QUESTION, datasets=[sales_schema], executor=Executor(nsql_engine), ask_model=model)
    assert isinstance(outcome, Answered), outcome
    assert outcome.attempts == 1
    assert outcome.outside_model_ms > 0
    assert outcome.result is not None
    expected = reference(
        nsql_engine,
        "SELECT customer_id, customer_name, sum(total) AS total_sales FROM modelbus.sales_data "
        "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5",
    )
    assert len(expected) == 5
    assert outcome.result.rows == expected
    assert [c.name for c in outcome.result.columns] == ["customer_id", "customer_name", "total_sales"]
    assert outcome.result.columns[2].type.startswith("Decimal(")
    # what the model saw: the question and the real schema
    prompt = model.calls[0][-1]["content"]
    assert QUESTION in prompt
    assert "| total | Decimal(18, 2) |" in prompt


async def test_other_phrasings_give_the_same_ranking(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    sql = (
        "SELECT customer_name, SUM(total) AS total_sales FROM sales_data "
        "GROUP BY customer_name ORDER BY 2 DESC LIMIT 5"
    )
    outcome = await answer(
        QUESTION,
        datasets=[sales_schema],
        executor=Executor(nsql_engine),
        ask_model=ScriptedModel([as_json(sql)]),
    )
    assert isinstance(outcome, Answered)
    assert outcome.result is not None
    assert outcome.result.rows == reference(
        nsql_engine, sql.replace("FROM sales_data", "FROM modelbus.sales_data")
    )


async def test_sql_only_plans_but_does_not_execute(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    # This statement passes the guard and plans fine, but fails on the first row it reads.
    boom = "SELECT order_id, throwIf(quantity > 0, 'this statement was executed') AS boom FROM sales_data"
    executor = Executor(nsql_engine)

    sql_only = await answer(
        QUESTION,
        datasets=[sales_schema],
        executor=executor,
        ask_model=ScriptedModel([as_json(boom)]),
        sql_only=True,
    )
    assert isinstance(sql_only, Answered), sql_only
    assert sql_only.result is None
    assert sql_only.attempts == 1
    assert "throwIf" in sql_only.sql

    executed = await answer(
        QUESTION,
        datasets=[sales_schema],
        executor=executor,
        ask_model=ScriptedModel([as_json(boom)]),
        max_attempts=1,
    )
    assert isinstance(executed, Failed)
    assert "this statement was executed" in executed.reason

    # A million-row result is fine to plan, and over the row limit when run.
    everything = "SELECT * FROM sales_data"
    planned = await answer(
        QUESTION,
        datasets=[sales_schema],
        executor=executor,
        ask_model=ScriptedModel([everything]),
        sql_only=True,
    )
    assert isinstance(planned, Answered)
    run = await answer(
        QUESTION,
        datasets=[sales_schema],
        executor=executor,
        ask_model=ScriptedModel([everything]),
        max_attempts=1,
    )
    assert isinstance(run, Failed)
    assert run.failures[0].kind == ErrorKind.LIMIT.value


async def test_sql_only_still_validates_and_retries(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    model = ScriptedModel([as_json("SELECT no_such_column FROM sales_data"), as_json(TOP5_SQL)])
    outcome = await answer(
        QUESTION, datasets=[sales_schema], executor=Executor(nsql_engine), ask_model=model, sql_only=True
    )
    assert isinstance(outcome, Answered)
    assert outcome.attempts == 2
    assert outcome.failures[0].kind == ErrorKind.SQL.value
    assert "no_such_column" in outcome.failures[0].error


async def test_a_failed_attempt_is_retried_with_its_sql_and_error(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    wrong = "SELECT customer, sum(total) AS total_sales FROM sales_data GROUP BY customer ORDER BY 2 DESC"
    model = ScriptedModel([as_json(wrong), as_json(TOP5_SQL)])
    outcome = await answer(QUESTION, datasets=[sales_schema], executor=Executor(nsql_engine), ask_model=model)
    assert isinstance(outcome, Answered), outcome
    assert outcome.attempts == 2
    assert outcome.result is not None
    assert len(outcome.result.rows) == 5

    assert len(model.calls) == 2
    first, second = model.calls
    assert second[: len(first)] == first  # the conversation grows; nothing is rewritten
    followup = "\n".join(m["content"] for m in second[len(first) :])
    assert wrong in followup
    error = outcome.failures[0].error
    assert "customer" in error
    assert "UNKNOWN_IDENTIFIER" in error
    assert error in followup
    assert second[len(first)]["role"] == "assistant"
    assert second[-1]["role"] == "user"


async def test_a_refused_attempt_is_retried_with_the_reason(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    model = ScriptedModel(["DROP TABLE sales_data", as_json(TOP5_SQL)])
    outcome = await answer(QUESTION, datasets=[sales_schema], executor=Executor(nsql_engine), ask_model=model)
    assert isinstance(outcome, Answered)
    assert outcome.failures[0].kind == REFUSED
    assert "only SELECT statements are allowed, not DROP" in model.calls[1][-1]["content"]


async def test_the_last_failure_is_reported_after_max_attempts(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    model = ScriptedModel(
        [as_json("SELECT nope FROM sales_data"), "I cannot answer that.", as_json("SELECT 1 +")]
    )
    outcome = await answer(
        QUESTION, datasets=[sales_schema], executor=Executor(nsql_engine), ask_model=model, max_attempts=3
    )
    assert isinstance(outcome, Failed)
    assert outcome.attempts == 3
    assert len(model.calls) == 3
    assert outcome.retryable
    assert [f.kind for f in outcome.failures] == [ErrorKind.SQL.value, REFUSED, REFUSED]
    assert outcome.last_sql == "SELECT 1 +"
    assert outcome.reason == outcome.failures[-1].error
    assert "does not parse" in outcome.reason


async def test_model_errors_are_the_callers(nsql_engine: ClickHouse, sales_schema: TableSchema) -> None:
    async def unavailable(messages: list[dict[str, str]], *, temperature: float = 0.0) -> str:
        raise ConnectionError("no model worker")

    with pytest.raises(ConnectionError):
        await answer(QUESTION, datasets=[sales_schema], executor=Executor(nsql_engine), ask_model=unavailable)


async def test_concurrent_questions_use_separate_readers(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    executor = Executor(nsql_engine)
    results: list[Answered | Failed] = []

    async def one() -> None:
        results.append(
            await answer(
                QUESTION,
                datasets=[sales_schema],
                executor=executor,
                ask_model=ScriptedModel([as_json(TOP5_SQL)]),
            )
        )

    async with anyio.create_task_group() as tg:
        for _ in range(3 * nsql_engine.settings.readers):
            tg.start_soon(one)
    rows = [r.result.rows for r in results if isinstance(r, Answered) and r.result is not None]
    assert len(rows) == 3 * nsql_engine.settings.readers
    assert all(r == rows[0] for r in rows)


@pytest.mark.parametrize(
    ("reply", "sql"),
    [
        ('{"sql": "SELECT 1"}', "SELECT 1"),
        ('  {"sql":"SELECT 2"}\n', "SELECT 2"),
        ('The answer is {"sql": "SELECT 3"} as requested', "SELECT 3"),
        ('{"query": "SELECT 4"}', '{"query": "SELECT 4"}'),  # not our shape: left for the guard to refuse
        ("SELECT 5", "SELECT 5"),
    ],
)
def test_extract_sql(reply: str, sql: str) -> None:
    assert extract_sql(reply) == sql


async def test_candidates_are_asked_at_once_and_the_shared_result_wins(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    lone = (
        "SELECT customer_id, customer_name, sum(total) AS t FROM sales_data "
        "GROUP BY customer_id, customer_name ORDER BY t ASC LIMIT 5"
    )
    same_rows_other_sql = (
        "SELECT customer_name, customer_id, sum(total) AS total_sales FROM sales_data "
        "GROUP BY customer_name, customer_id ORDER BY total_sales DESC LIMIT 5"
    )
    model = ScriptedModel([as_json(lone), as_json(TOP5_SQL), as_json(same_rows_other_sql)])
    outcome = await answer(
        QUESTION,
        datasets=[sales_schema],
        executor=Executor(nsql_engine),
        ask_model=model,
        candidates=3,
        candidate_temperature=0.5,
    )
    assert isinstance(outcome, Answered)
    assert model.temperatures == [0.0, 0.5, 0.5]  # the greedy one first, then the sampled ones
    assert outcome.attempts == 1
    assert outcome.sql == TOP5_SQL  # two of three agree on the rows; the first of them is kept
    assert outcome.result is not None
    assert sorted(outcome.result.rows) == sorted(
        reference(nsql_engine, TOP5_SQL.replace("FROM sales_data", "FROM modelbus.sales_data"))
    )
    assert outcome.explanation is not None
    assert "sum(total) as total_sales per customer_id, customer_name" in outcome.explanation
    assert "from sales_data" in outcome.explanation


async def test_a_failing_greedy_candidate_is_outvoted_by_one_that_runs(
    nsql_engine: ClickHouse, sales_schema: TableSchema
) -> None:
    model = ScriptedModel([as_json("SELECT nope FROM sales_data"), as_json(TOP5_SQL)])
    outcome = await answer(
        QUESTION, datasets=[sales_schema], executor=Executor(nsql_engine), ask_model=model, candidates=2
    )
    assert isinstance(outcome, Answered)
    assert outcome.sql == TOP5_SQL
    assert len(model.calls) == 2  # no retry: one candidate of the first attempt ran


async def test_a_retry_says_which_table_has_the_missing_column(nsql_engine: ClickHouse) -> None:
    from tests.test_nsql_grounding import _samples  # the three real samples, described

    schemas = await _samples(nsql_engine)
    wrong = "SELECT supplier, sum(total) AS revenue FROM sales_data GROUP BY supplier"
    right = (
        "SELECT p.supplier AS supplier, sum(s.total) AS revenue FROM sales_data AS s "
        "JOIN products AS p ON p.product = s.product GROUP BY supplier"
    )
    model = ScriptedModel([as_json(wrong), as_json(right)])
    outcome = await answer(
        "Revenue per supplier?",
        datasets=schemas,
        executor=Executor(nsql_engine),
        ask_model=model,
        retry_temperature=0.4,
    )
    assert isinstance(outcome, Answered)
    assert outcome.attempts == 2
    assert model.temperatures == [0.0, 0.4]  # the retry is sampled: greedy would write the same again
    feedback = model.calls[1][-1]["content"]
    assert "How to fix it: `supplier` is a column of `products`" in feedback
    assert "ON products.product = sales_data.product" in feedback
    assert outcome.explanation is not None and "joined with products" in outcome.explanation
