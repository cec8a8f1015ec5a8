"""The prompt grounded in the data: date ranges, keys and joins read from the real samples, the clock pinned
to the data's last date, worked examples, and the vote over candidate results."""

from __future__ import annotations

import sqlglot

from modelbus.config.model import DatasetConfig, DatasetExample
from modelbus.runtime.clickhouse.engine import ClickHouse, Column, QueryResult
from modelbus.runtime.clickhouse.names import TableRef
from modelbus.workers.nsql.anchor import pin_today
from modelbus.workers.nsql.context import ColumnInfo, TableSchema, describe_dataset
from modelbus.workers.nsql.datasets import load_dataset
from modelbus.workers.nsql.prompt import anchor_date, build_messages
from modelbus.workers.nsql.relations import Join, infer_joins
from modelbus.workers.nsql.vote import Tally, tally, winner
from tests.support.nsql_fixtures import nsql_engine

__all__ = ("nsql_engine",)


async def _samples(engine: ClickHouse, **configs: DatasetConfig) -> list[TableSchema]:
    names = ("sales_data", "customers", "products")
    schemas = []
    for name in names:
        config = configs.get(name, DatasetConfig(name=name, from_=f"sample:{name}"))
        schemas.append(await describe_dataset(engine, load_dataset(engine, config), sample_rows=0))
    return schemas


async def test_the_samples_describe_their_dates_keys_and_joins(nsql_engine: ClickHouse) -> None:
    sales, customers, products = await _samples(nsql_engine)
    assert sales.date_ranges["order_date"].first == "2022-01-01"
    assert sales.date_ranges["order_date"].last == "2025-12-31"
    assert customers.date_ranges["signup_date"].last <= "2024-12-31"
    assert sales.unique_columns == ("order_id",)  # customer_id repeats in sales_data
    assert customers.unique_columns[0] == "customer_id"
    assert products.unique_columns == ("product",)
    assert products.more_values == ("product",)  # 28 products, 10 listed: "values include"
    assert customers.distinct_values["segment"]  # all four listed
    assert "segment" not in customers.more_values
    assert infer_joins([sales, customers, products]) == [
        Join("sales_data", "customer_id", "customers", "customer_id"),
        Join("sales_data", "product", "products", "product"),
    ]
    assert anchor_date([sales, customers]) == "2025-12-31"
    assert anchor_date([customers]) == customers.date_ranges["signup_date"].last


async def test_the_prompt_says_how_to_join_and_where_dates_count_from(nsql_engine: ClickHouse) -> None:
    schemas = await _samples(nsql_engine)
    user = build_messages("What is the revenue per segment?", schemas)[1]["content"]
    assert "ON customers.customer_id = sales_data.customer_id" in user
    assert "Columns only in customers: segment, country, signup_date." in user
    assert "Columns only in products: supplier, list_price, unit_cost." in user
    assert "The data ends on 2025-12-31" in user
    assert "last year is 2024" in user
    assert user.rstrip().endswith("What is the revenue per segment?")
    # alone, sales_data has no join to describe and no join example
    alone = build_messages("What is the revenue?", schemas[:1])[1]["content"]
    assert "How the tables join" not in alone
    assert "JOIN" not in alone.split("## Examples", 1)[1]


async def test_examples_come_from_config_and_only_when_their_tables_are_there(
    nsql_engine: ClickHouse,
) -> None:
    own = DatasetExample(
        question="Orders per weekday?",
        sql="SELECT toDayOfWeek(order_date) AS d, count() FROM sales_data GROUP BY d",
    )
    needs_customers = DatasetExample(
        question="Orders per country?",
        sql="SELECT c.country, count() FROM sales_data AS s "
        "JOIN customers AS c ON c.customer_id = s.customer_id GROUP BY c.country",
    )
    sales = DatasetConfig(name="sales_data", from_="sample:sales_data", examples=(own, needs_customers))
    schemas = await _samples(nsql_engine, sales_data=sales)
    assert schemas[0].examples == (own, needs_customers)  # the config's replace the built-in ones
    alone = build_messages("q", schemas[:1])[1]["content"]
    assert "Orders per weekday?" in alone
    assert "Orders per country?" not in alone
    both = build_messages("q", schemas[:2])[1]["content"]
    assert "Orders per country?" in both
    for example in (own, needs_customers):  # every example is valid SQL for the prompt's dialect
        sqlglot.parse_one(example.sql, read="clickhouse")


async def test_a_declared_primary_key_comes_first(nsql_engine: ClickHouse) -> None:
    customers = DatasetConfig(name="customers", from_="sample:customers", primary_key="customer_name")
    sales, described, _ = await _samples(nsql_engine, customers=customers)
    assert described.unique_columns[0] == "customer_name"
    assert infer_joins([sales, described])[0] == Join(
        "sales_data", "customer_name", "customers", "customer_name"
    )


def test_clock_functions_become_the_data_s_last_date() -> None:
    pinned = pin_today(
        "SELECT count() FROM t WHERE d > today() - 30 AND toYear(d) = toYear(now()) - 1", "2025-12-31"
    )
    assert "today()" not in pinned and "now()" not in pinned
    assert "toDate('2025-12-31')" in pinned
    assert "toDateTime('2025-12-31 23:59:59')" in pinned
    for clock in ("CURDATE()", "current_date", "CURRENT_DATE()"):
        assert "toDate('2025-12-31')" in pin_today(f"SELECT {clock}", "2025-12-31")
    assert pin_today("SELECT yesterday()", "2025-12-31") == "SELECT toDate('2025-12-31') - 1"
    untouched = "SELECT toYear(order_date) FROM t WHERE x = 'today()'"
    assert pin_today(untouched, "2025-12-31") == untouched  # a string literal is not a call
    assert pin_today("SELECT today()", None) == "SELECT today()"  # no dates in the data: no anchor
    assert pin_today("SELECT (", "2025-12-31") == "SELECT ("  # the guard reports what does not parse


def _result(*rows: tuple[object, ...]) -> QueryResult:
    return QueryResult(columns=(Column("a", "Int64"), Column("b", "Int64")), rows=list(rows))


def test_the_vote_goes_to_the_result_most_candidates_share() -> None:
    a, b = _result((1, 2), (3, 4)), _result((9, 9))
    same_as_a = _result((4, 3), (2, 1))  # other column order, other row order: the same answer
    assert winner([b, a, same_as_a]) == 1
    assert tally([b, a, same_as_a]) == Tally(1, 2)  # the log line's "agreeing"
    assert tally([b]) == Tally(0, 1)  # one candidate: nothing to compare
    assert winner([a, b]) == 0  # a tie: the first (greedy) candidate
    assert winner([_result(), b]) == 1  # an empty answer loses to any other
    assert winner([_result((None, None)), _result((None, None)), b]) == 2
    assert winner([_result(), _result()]) == 0
    assert winner([None, None]) == 0  # SQL only: nothing ran, the first valid statement


def test_joins_need_a_key_on_one_side() -> None:
    def table(name: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> TableSchema:
        return TableSchema(
            name=name,
            table=TableRef("db", name),
            columns=tuple(ColumnInfo(c, "String") for c in columns),
            unique_columns=keys,
        )

    events = table("events", ("id", "user_id", "kind"), ("id",))
    users = table("users", ("user_id", "kind", "name"), ("user_id", "name"))
    kinds = table("kinds", ("kind", "label"), ("kind",))
    assert infer_joins([users, events]) == [Join("events", "user_id", "users", "user_id")]
    # users.kind and events.kind are no key of either: only kinds, which has one row per kind, joins them
    assert infer_joins([events, users, kinds]) == [
        Join("events", "user_id", "users", "user_id"),
        Join("events", "kind", "kinds", "kind"),
        Join("users", "kind", "kinds", "kind"),
    ]
    assert infer_joins([events, table("logs", ("line",), ())]) == []


def test_the_explanation_says_what_the_sql_computes() -> None:
    from modelbus.workers.nsql.explain import explain

    top = explain(
        "SELECT region, sum(total) AS revenue FROM sales_data WHERE toYear(order_date) = 2024 "
        "GROUP BY region ORDER BY revenue DESC LIMIT 5"
    )
    assert top == (
        "Computes sum(total) as revenue per region, from sales_data, where toYear(order_date) = 2024, "
        "highest revenue first, top 5 rows."
    )
    joined = explain(
        "SELECT c.segment AS segment, avg(s.total) AS aov FROM sales_data AS s "
        "JOIN customers AS c ON c.customer_id = s.customer_id GROUP BY segment HAVING aov > 10"
    )
    assert joined is not None
    assert "avg(s.total) as aov per segment" in joined
    assert "joined with customers on c.customer_id = s.customer_id" in joined
    assert "keeping groups where aov > 10" in joined
    nested = explain("SELECT count() AS n FROM (SELECT customer_id FROM sales_data GROUP BY customer_id)")
    assert nested == "Computes count() as n, from a subquery over sales_data."
    pinned = explain("SELECT count() FROM t WHERE d > toDate('2025-12-31') - 30", "2025-12-31")
    assert pinned is not None and pinned.endswith("dates relative to 2025-12-31, the data's latest date.")
    assert "relative" not in (explain("SELECT count() FROM t WHERE d > '2024-01-01'", "2025-12-31") or "")
    assert explain("SELECT a FROM t UNION ALL SELECT a FROM u") == "The union of several queries over t, u."
    assert explain("SELECT (") is None


async def test_hints_name_the_table_that_has_the_column(nsql_engine: ClickHouse) -> None:
    from modelbus.workers.nsql.hints import NOT_AN_AGGREGATE, UNKNOWN_IDENTIFIER, hint

    schemas = await _samples(nsql_engine)
    qualified = hint(
        UNKNOWN_IDENTIFIER,
        "Identifier 'sales_data.segment' cannot be resolved from table with name sales_data.",
        schemas,
    )
    assert qualified is not None
    assert "`segment` is a column of `customers`" in qualified
    assert "ON customers.customer_id = sales_data.customer_id" in qualified
    invented = hint(
        UNKNOWN_IDENTIFIER, "Unknown expression identifier `profit` in scope SELECT profit", schemas
    )
    assert invented is not None and "no column `profit`" in invented
    assert "sum(" in (hint(NOT_AN_AGGREGATE, "Column 'total' is not under aggregate function", schemas) or "")
    assert hint(62, "Syntax error", schemas) is None  # no known fix: the error goes as it is


async def test_every_built_in_example_runs_through_the_guard(nsql_engine: ClickHouse) -> None:
    from modelbus.workers.nsql import sample_data
    from modelbus.workers.nsql.executor import Executor
    from modelbus.workers.nsql.guard import Allowed, check

    schemas = await _samples(nsql_engine)
    allowed = {s.name: s.table for s in schemas}
    executor = Executor(nsql_engine)
    for spec in sample_data.SAMPLES.values():
        assert spec.examples, spec.name
        for example in spec.examples:
            verdict = check(example.sql, allowed)
            assert isinstance(verdict, Allowed), (example.question, verdict)
            result = await executor.execute(verdict)
            assert not isinstance(result, Exception) and getattr(result, "rows", None), example.question
