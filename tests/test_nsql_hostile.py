"""A hostile corpus through the whole retry loop on the real engine: every statement is refused by the
guard before anything runs, or (the resource-hungry ones) stopped by the reader's limits; no statement
changes the canary or secret table and none creates a file."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from modelbus.runtime.clickhouse.engine import ClickHouse, QueryResult
from modelbus.workers.nsql.context import TableSchema
from modelbus.workers.nsql.executor import ErrorKind, Executor, QueryError
from modelbus.workers.nsql.generate import REFUSED, Failed, answer
from modelbus.workers.nsql.guard import Allowed
from tests.support.nsql_fixtures import (
    CANARY,
    ScriptedModel,
    canary_schema,
    files_under,
    nsql_engine,
    sales_dataset,
    sales_schema,
    untouched,
)

__all__ = ("canary_schema", "nsql_engine", "sales_dataset", "sales_schema")

OUT = Path("/tmp/modelbus-nsql-hostile")  # files a statement could try to write; must never appear
SECRET = "nsql_test.secret"

TABLE_FUNCTIONS = [
    f"SELECT * FROM file('{OUT}/x.csv', 'CSV')",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:9/x.csv', 'CSV')",
    "SELECT * FROM s3('http://127.0.0.1:9/bucket/x.csv', 'CSV')",
    "SELECT * FROM s3Cluster('default', 'http://127.0.0.1:9/bucket/x.csv')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:9/x.csv', 'CSV', 'x String')",
    f"SELECT * FROM remote('127.0.0.1:9000', '{SECRET}')",
    f"SELECT * FROM remoteSecure('127.0.0.1:9440', '{SECRET}')",
    f"SELECT * FROM cluster('default', '{SECRET}')",
    "SELECT * FROM mysql('127.0.0.1:3306', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:5432', 'db', 't', 'u', 'p')",
    "SELECT * FROM jdbc('jdbc:mysql://127.0.0.1/db', 't')",
    "SELECT * FROM odbc('DSN=x', 'db', 't')",
    "SELECT * FROM executable('id', 'TSV', 'x String')",
    "SELECT * FROM input('x String')",
    "SELECT * FROM azureBlobStorage('http://127.0.0.1:9/c', 'c', 'x.csv')",
    "SELECT * FROM gcs('http://127.0.0.1:9/bucket/x.csv', 'CSV')",
    "SELECT * FROM iceberg('http://127.0.0.1:9/lake/t')",
    "SELECT * FROM deltaLake('http://127.0.0.1:9/lake/t')",
    "SELECT * FROM hudi('http://127.0.0.1:9/lake/t')",
    "SELECT * FROM mongodb('127.0.0.1:27017', 'db', 'c', 'u', 'p', 'x String')",
    "SELECT * FROM redis('127.0.0.1:6379', 'k', 'k String')",
    "SELECT * FROM sqlite('/tmp/x.db', 't')",
    "SELECT * FROM dictionary('some_dictionary')",
    "SELECT * FROM merge('nsql_test', '.*')",
    "SELECT * FROM numbers(1000000000)",
    "SELECT * FROM generateRandom('x String') LIMIT 10",
    f"SELECT * FROM view(SELECT * FROM {SECRET})",
]

REFUSED_CORPUS = [
    # DDL
    "DROP TABLE canary",
    "DROP DATABASE nsql_test",
    "CREATE TABLE evil (x UInt8) ENGINE = Memory",
    f"CREATE VIEW leak AS SELECT * FROM {SECRET}",
    "ALTER TABLE canary DELETE WHERE 1",
    "ALTER TABLE canary UPDATE note = 'pwned' WHERE 1",
    "TRUNCATE TABLE canary",
    "RENAME TABLE canary TO gone",
    # DML
    "INSERT INTO canary VALUES (99, 'pwned')",
    "INSERT INTO canary SELECT id + 10, 'pwned' FROM canary",
    "DELETE FROM canary WHERE 1",
    "UPDATE canary SET note = 'pwned' WHERE 1",
    f"INSERT INTO FUNCTION file('{OUT}/out.csv', 'CSV') SELECT * FROM canary",
    # SET, SYSTEM, KILL, OPTIMIZE, ATTACH/DETACH, GRANT and other statements
    "SET readonly = 0",
    "SET max_execution_time = 1000",
    "SYSTEM SHUTDOWN",
    "SYSTEM DROP MARK CACHE",
    "KILL QUERY WHERE 1",
    "OPTIMIZE TABLE canary FINAL",
    "DETACH TABLE canary",
    "ATTACH TABLE canary",
    "GRANT ALL ON *.* TO default",
    "USE system",
    "EXPLAIN SELECT * FROM canary",
    "SHOW TABLES",
    f"DESCRIBE TABLE {SECRET}",
    # several statements, some hidden behind comments, code fences or the JSON answer
    "SELECT * FROM canary; DROP TABLE canary",
    "SELECT 1; INSERT INTO canary VALUES (99, 'pwned')",
    "SELECT 1 -- harmless\n; DROP TABLE canary",
    "SELECT 1 /* hide */; TRUNCATE TABLE canary",
    "SELECT 1 /* ; */ ; ALTER TABLE canary DELETE WHERE 1",
    "SELECT 1 # mysql-style comment\n; DROP TABLE canary",
    "```sql\nSELECT 1;\nDROP TABLE canary;\n```",
    '{"sql": "SELECT count() FROM canary; DROP TABLE canary"}',
    # system tables and tables that are not datasets
    "SELECT * FROM system.tables",
    "SELECT name FROM system.databases",
    "SELECT * FROM system.numbers LIMIT 10",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT * FROM information_schema.columns",
    "SELECT * FROM secret",
    f"SELECT * FROM {SECRET}",
    f"SELECT c.id FROM canary AS c JOIN {SECRET} AS s ON c.id = s.id",
    f"SELECT id IN {SECRET} FROM canary",
    f"SELECT id FROM canary WHERE id GLOBAL IN {SECRET}",
    f"WITH x AS (SELECT * FROM {SECRET}) SELECT * FROM x",
    "SELECT * FROM VALUES('x UInt8', 1, 2)",
    # functions that reach outside, read server state or stall
    "SELECT file('/etc/passwd')",
    "SELECT sleep(3)",
    "SELECT sleepEachRow(1) FROM canary",
    "SELECT dictGet('some_dictionary', 'x', toUInt64(1))",
    f"SELECT joinGet('{SECRET}', 'note', toUInt32(1))",
    "SELECT hasColumnInTable('nsql_test', 'secret', 'note')",
    f"SELECT globalIn(1, {SECRET})",
    "SELECT getSetting('max_execution_time')",
    "SELECT hostName()",
    # limits cannot be changed, nothing is written out
    "SELECT * FROM canary SETTINGS max_execution_time = 1000",
    "SELECT * FROM canary SETTINGS readonly = 0",
    "SELECT * FROM sales_data SETTINGS max_result_rows = 0, result_overflow_mode = 'break'",
    f"SELECT * FROM canary INTO OUTFILE '{OUT}/dump.csv'",
    f"SELECT * FROM canary INTO OUTFILE '{OUT}/dump.csv' FORMAT CSV",
    "SELECT * FROM canary FORMAT JSON",
    "SELECT {x:UInt8}",
    *TABLE_FUNCTIONS,
]

# These pass the guard (they are reads of allowed datasets) and must be stopped by the reader's limits:
# result rows (also when ClickHouse's own count misses them, as for arrayJoin without a table), result
# bytes, memory and time.
STOPPED_CORPUS = [
    "SELECT * FROM sales_data",
    "SELECT arrayJoin(range(1000000)) AS n",
    "SELECT a.order_id, b.order_id FROM sales_data AS a CROSS JOIN sales_data AS b",
    "SELECT count() FROM sales_data AS a, sales_data AS b WHERE a.total + b.total < 0",
    "SELECT groupArray(repeat(customer_name, 1000)) FROM sales_data",
    "SELECT range(200000000) AS huge_array",
    "SELECT arrayStringConcat(groupArray(customer_name)) AS all_names FROM sales_data",
]


class RecordingExecutor(Executor):
    """An executor that records every statement that reached the engine."""

    def __init__(self, engine: ClickHouse) -> None:
        super().__init__(engine)
        self.seen: list[str] = []

    async def execute(self, statement: Allowed) -> QueryResult | QueryError:
        self.seen.append(statement.executable)
        return await super().execute(statement)

    async def validate(self, statement: Allowed) -> QueryError | None:
        self.seen.append(statement.executable)
        return await super().validate(statement)


def test_the_corpus_is_big_enough() -> None:
    assert len(REFUSED_CORPUS) + len(STOPPED_CORPUS) >= 40
    assert len(set(REFUSED_CORPUS + STOPPED_CORPUS)) == len(REFUSED_CORPUS + STOPPED_CORPUS)


@pytest.mark.parametrize("sql_only", [False, True], ids=["execute", "sql-only"])
@pytest.mark.parametrize("statement", REFUSED_CORPUS)
async def test_refused_before_anything_runs(
    statement: str,
    sql_only: bool,
    nsql_engine: ClickHouse,
    sales_schema: TableSchema,
    canary_schema: TableSchema,
) -> None:
    executor = RecordingExecutor(nsql_engine)
    model = ScriptedModel([statement])
    before = files_under(OUT)
    outcome = await answer(
        "Do as you are told",
        datasets=[sales_schema, canary_schema],
        executor=executor,
        ask_model=model,
        sql_only=sql_only,
        max_attempts=2,
    )
    assert isinstance(outcome, Failed)
    assert outcome.attempts == 2
    assert [f.kind for f in outcome.failures] == [REFUSED, REFUSED], outcome.failures
    assert executor.seen == []  # nothing reached the engine
    assert untouched(nsql_engine)
    assert files_under(OUT) == before


@pytest.mark.parametrize("statement", STOPPED_CORPUS)
async def test_resource_hungry_reads_are_stopped_by_limits(
    statement: str, nsql_engine: ClickHouse, sales_schema: TableSchema, canary_schema: TableSchema
) -> None:
    executor = RecordingExecutor(nsql_engine)
    outcome = await answer(
        "Give me everything",
        datasets=[sales_schema, canary_schema],
        executor=executor,
        ask_model=ScriptedModel([statement]),
        max_attempts=1,
    )
    assert isinstance(outcome, Failed)
    assert len(executor.seen) == 1  # it passed the guard and ran ...
    assert outcome.failures[0].kind == ErrorKind.LIMIT.value, outcome.failures  # ... until a limit stopped it
    assert untouched(nsql_engine)


def test_the_reader_itself_refuses_writes_and_setting_changes(nsql_engine: ClickHouse) -> None:
    """Defence in depth: statements that skip the guard still cannot write, read files or lift a limit
    on a reader connection (``readonly = 1``)."""
    for sql in (
        f"INSERT INTO {CANARY.sql} VALUES (99, 'pwned')",
        f"ALTER TABLE {CANARY.sql} DELETE WHERE 1",
        f"TRUNCATE TABLE {CANARY.sql}",
        "CREATE TABLE nsql_test.evil (x UInt8) ENGINE = Memory",
        f"SELECT count() FROM {CANARY.sql} SETTINGS max_execution_time = 1000",
        f"SELECT count() FROM {CANARY.sql} SETTINGS readonly = 0",
        "SET max_result_rows = 0",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        f"INSERT INTO FUNCTION file('{OUT}/bypass.csv', 'CSV') SELECT 1",
    ):
        with pytest.raises(DatabaseError) as raised:
            nsql_engine.read(partial(run_query, sql=sql))
        assert raised.value.code == 164, (sql, raised.value)  # READONLY
    assert untouched(nsql_engine)
    assert not (OUT / "bypass.csv").exists()
    assert nsql_engine.read(
        lambda client: client.query("SELECT getSetting('max_result_rows')").result_rows
    ) == [(nsql_engine.settings.max_result_rows,)]


def run_query(client: Any, sql: str) -> Any:
    return client.query(sql)
