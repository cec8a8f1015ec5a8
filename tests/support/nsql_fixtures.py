"""Shared NSQL fixtures: one embedded ClickHouse engine per test session (chdb allows one data directory
per process), the 1M-row ``sales_data`` sample generated once, a canary table for "nothing ran" proofs,
and a scripted stand-in for the model.

Import the fixtures into a test module by name (pytest finds fixtures in the module's namespace) and list
them in the module's ``__all__`` so that linters see them used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from modelbus.config.model import ClickHouseSettings, DatasetConfig
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.clickhouse.names import TableRef
from modelbus.workers.nsql.context import Message, TableSchema, describe
from modelbus.workers.nsql.datasets import Dataset, load_dataset
from modelbus.workers.nsql.executor import Executor

# Small limits keep the resource tests fast; the top-5 question fits well inside them.
TEST_SETTINGS = ClickHouseSettings(
    max_execution_time=3.0,
    max_result_rows=1_000,
    max_result_bytes=8 * 1024 * 1024,
    max_memory_usage=512 * 1024 * 1024,
    readers=4,
)
TEST_DB = "nsql_test"
CANARY = TableRef(TEST_DB, "canary")
SECRET = TableRef(TEST_DB, "secret")
CANARY_ROWS = 3

TOP5_SQL = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM sales_data "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5"
)


class ScriptedModel:
    """An ``ask_model`` stand-in: answers from a script (the last answer repeats) and records every call."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[list[Message]] = []
        self.temperatures: list[float] = []

    async def __call__(self, messages: list[Message], *, temperature: float = 0.0) -> str:
        self.calls.append([dict(m) for m in messages])
        self.temperatures.append(temperature)
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]  # before others are called
        await anyio.lowlevel.checkpoint()
        return answer


_engine: ClickHouse | None = None


@pytest.fixture(scope="session")
def nsql_engine(tmp_path_factory: pytest.TempPathFactory) -> ClickHouse:
    """The session's embedded engine, with a canary and a secret table that tests must never change.

    Test modules import this fixture, which gives each module its own copy of it; the engine behind them
    is one per process all the same (chdb cannot open a second data directory in a process).
    """
    global _engine  # noqa: PLW0603 - one engine per process is chdb's rule, not a choice
    if _engine is None:
        engine = ClickHouse.open(TEST_SETTINGS, data_dir=tmp_path_factory.getbasetemp() / "nsql-chdb")
        engine.admin(_create_canaries)
        _engine = engine
    return _engine  # left open: another module's copy of this fixture may still use it; exit closes it


def _create_canaries(client: Any) -> None:
    client.command(f"CREATE DATABASE IF NOT EXISTS {TEST_DB}")
    for table in (CANARY, SECRET):
        columns = "(id UInt32, note String) ENGINE = MergeTree ORDER BY id"
        client.command(f"CREATE TABLE IF NOT EXISTS {table.sql} {columns}")
        client.command(f"INSERT INTO {table.sql} SELECT number, 'untouched' FROM numbers({CANARY_ROWS})")


@pytest.fixture(scope="session")
def sales_dataset(nsql_engine: ClickHouse) -> Dataset:
    """The 1M-row sample, generated once per session."""
    dataset = load_dataset(nsql_engine, DatasetConfig(name="sales_data", from_="sample:sales_data"))
    assert dataset.ready, dataset.error_message
    return dataset


@pytest.fixture(scope="session")
def sales_schema(nsql_engine: ClickHouse, sales_dataset: Dataset) -> TableSchema:
    table = sales_dataset.table
    assert table is not None
    return nsql_engine.admin(
        lambda client: describe(
            client,
            "sales_data",
            table,
            sales_dataset.description,
            sample_rows=3,
            distinct_values=10,
        )
    )


@pytest.fixture(scope="session")
def canary_schema(nsql_engine: ClickHouse) -> TableSchema:
    """The canary as an allowed dataset: writes aimed at an allowed table must be refused too."""
    return nsql_engine.admin(
        lambda client: describe(client, "canary", CANARY, "a canary", sample_rows=0, distinct_values=0)
    )


@pytest.fixture
def executor(nsql_engine: ClickHouse) -> Executor:
    return Executor(nsql_engine)


def admin_rows(engine: ClickHouse, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a trusted query run directly on the admin client (the hand-written reference)."""
    return [tuple(r) for r in engine.admin(lambda client: client.query(sql).result_rows)]


def untouched(engine: ClickHouse) -> bool:
    """The canary and the secret table still hold exactly what the session put there."""
    for table in (CANARY, SECRET):
        rows = admin_rows(engine, f"SELECT count(), countIf(note = 'untouched') FROM {table.sql}")
        if rows != [(CANARY_ROWS, CANARY_ROWS)]:
            return False
    return True


def files_under(path: Path) -> set[Path]:
    return set(path.rglob("*")) if path.exists() else set()
