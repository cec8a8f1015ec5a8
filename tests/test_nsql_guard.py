"""The SQL guard on its own: what passes, how it is rewritten, and why things are refused."""

from __future__ import annotations

import pytest

from modelbus.runtime.clickhouse.names import TableRef
from modelbus.workers.nsql.guard import Allowed, Refused, check, clean_model_sql

ALLOWED = {"sales_data": TableRef("modelbus", "sales_data"), "orders": TableRef("shop", "orders_v2")}


def allowed(sql: str) -> Allowed:
    verdict = check(sql, ALLOWED)
    assert isinstance(verdict, Allowed), verdict
    return verdict


def refused(sql: str) -> str:
    verdict = check(sql, ALLOWED)
    assert isinstance(verdict, Refused), verdict
    return verdict.reason


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("```sql\nSELECT 1;\n```", "SELECT 1"),
        ("Here you go:\n```\nSELECT 2\n```\nHope it helps", "SELECT 2"),
        ("  SELECT 3 ;; \n", "SELECT 3"),
        ("--SELECT 4", "SELECT 4"),
        ("-- the query\nSELECT 5", "-- the query\nSELECT 5"),
        # a second statement is kept so that the guard refuses it, not silently dropped
        ("SELECT 6; DROP TABLE t;", "SELECT 6; DROP TABLE t"),
    ],
)
def test_clean_model_sql(raw: str, clean: str) -> None:
    assert clean_model_sql(raw) == clean


def test_dataset_names_are_bound_to_their_real_tables() -> None:
    verdict = allowed("SELECT region, sum(total) AS s FROM sales_data GROUP BY region")
    assert verdict.sql == "SELECT region, sum(total) AS s FROM sales_data GROUP BY region"
    assert 'FROM "modelbus"."sales_data" AS "sales_data"' in verdict.executable
    assert verdict.datasets == ("sales_data",)

    # a dataset whose table is named differently, an explicit alias, and the real qualified name
    joined = allowed(
        "SELECT o.id FROM orders AS o JOIN modelbus.sales_data s ON o.id = s.order_id WHERE sales_data_x = 1"
    )
    assert '"shop"."orders_v2" AS o' in joined.executable
    assert '"modelbus"."sales_data" AS s' in joined.executable
    assert joined.datasets == ("orders", "sales_data")


def test_read_only_shapes_that_pass() -> None:
    for sql in (
        "WITH t AS (SELECT customer_id, total FROM sales_data) "
        "SELECT customer_id, sum(total) FROM t GROUP BY customer_id",
        "WITH 10 AS n SELECT n",
        "WITH (SELECT max(total) FROM sales_data) AS m SELECT count() FROM sales_data WHERE total = m",
        "SELECT 1 UNION ALL SELECT 2",
        "(SELECT 1) UNION DISTINCT (SELECT order_id FROM sales_data LIMIT 1)",
        "SELECT order_id FROM sales_data INTERSECT SELECT id FROM orders",
        "SELECT * FROM (SELECT * FROM sales_data) AS x LIMIT 3",
        "SELECT order_id IN (SELECT id FROM orders) FROM sales_data",
        "SELECT order_id IN (1, 2, 3) FROM sales_data",
        "SELECT x FROM sales_data ARRAY JOIN [1, 2] AS x",
        "SELECT quantile(0.9)(total), uniqExact(customer_id) FROM sales_data",
        "SELECT arrayMap(x -> x * 2, [1, 2])",
        "SELECT count() FROM sales_data WHERE customer_name ILIKE '%smith%'",
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT sum(n) FROM r",
    ):
        allowed(sql)


def test_comments_never_reach_the_engine() -> None:
    verdict = allowed("SELECT 1 /* ; DROP TABLE t */ -- and this\n")
    assert verdict.sql == verdict.executable == "SELECT 1"


def test_a_cte_that_shadows_a_dataset_is_not_bound() -> None:
    verdict = allowed("WITH sales_data AS (SELECT 1 AS x) SELECT x FROM sales_data")
    assert "modelbus" not in verdict.executable
    assert verdict.datasets == ()


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("", "no SQL statement"),
        ("SELECT FROM WHERE", "does not parse"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("DROP TABLE sales_data", "only SELECT statements are allowed, not DROP"),
        ("INSERT INTO sales_data SELECT * FROM sales_data", "not INSERT"),
        ("SYSTEM SHUTDOWN", "not SYSTEM"),
        ("SET max_threads = 1", "not SET"),
        ("KILL QUERY WHERE 1", "not KILL"),
        ("SELECT * FROM other_table", "the table other_table is not one of the datasets"),
        ("SELECT * FROM shop.orders", "shop.orders is not one of the datasets"),
        ("SELECT * FROM default.sales_data", "default.sales_data is not one of"),
        ("SELECT * FROM system.one", "system tables are not allowed"),
        ("SELECT * FROM a.b.c", "three-part"),
        ("SELECT * FROM numbers(3)", "table functions are not allowed: numbers()"),
        ("SELECT * FROM read_csv('/etc/passwd')", "table functions are not allowed"),
        ("SELECT * FROM generate_series(1, 3)", "table functions are not allowed"),
        ("SELECT * FROM UNNEST([1, 2])", "only tables and subqueries can be read"),
        ("SELECT * FROM sales_data SETTINGS max_threads = 1", "SETTINGS"),
        ("SELECT 1 FORMAT JSON", "FORMAT"),
        ("SELECT {n:UInt8}", "parameters"),
        ("SELECT SLEEP(1)", "SLEEP() is not allowed"),
        ("SELECT FiLe('/etc/hostname')", "FiLe() is not allowed"),
        ("SELECT dictGetString('d', 'a', 1)", "dictGetString() is not allowed"),
        ("SELECT order_id IN sales_data FROM sales_data", "IN <table>"),
        ("SELECT order_id IN (orders) FROM sales_data", "IN <table>"),
    ],
)
def test_refusals_say_why(sql: str, reason: str) -> None:
    assert reason in refused(sql)


def test_parse_errors_are_readable() -> None:
    reason = refused("SELECT 1 INTO OUTFILE '/tmp/x'")
    assert reason.startswith("the SQL does not parse as ClickHouse SQL")
    assert "\x1b" not in reason


def test_length_limit() -> None:
    long_sql = "SELECT " + " + ".join(["1"] * 200)
    assert isinstance(check(long_sql, ALLOWED, max_chars=len(long_sql)), Allowed)
    verdict = check(long_sql, ALLOWED, max_chars=len(long_sql) - 1)
    assert isinstance(verdict, Refused)
    assert "longer than" in verdict.reason
