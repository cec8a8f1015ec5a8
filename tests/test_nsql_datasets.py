"""Datasets from config on the real engine: files and samples loaded once, existing tables found, and
clear, structured errors for what cannot be loaded."""

from __future__ import annotations

import decimal
import os
from pathlib import Path

import pytest

from schemas.status import ModelStatus
from services.config.model import ClickHouseSettings, DatasetConfig
from tests.support.nsql_fixtures import CANARY, CANARY_ROWS, admin_rows, nsql_engine, sales_dataset
from workers.nsql.clickhouse import ClickHouse, EngineError
from workers.nsql.datadir import claim_data_dir
from workers.nsql.datasets import Dataset, load_dataset, load_datasets
from workers.nsql.names import TableRef

__all__ = ("nsql_engine", "sales_dataset")


def load(engine: ClickHouse, name: str, source: str, base_dir: Path | None = None, **params: str) -> Dataset:
    return load_dataset(engine, DatasetConfig(name=name, from_=source, params=params), base_dir=base_dir)


def table_uuid(engine: ClickHouse, table: TableRef) -> str:
    where = f"database = '{table.database}' AND name = '{table.table}'"
    rows = admin_rows(engine, f"SELECT toString(uuid) FROM system.tables WHERE {where}")
    assert len(rows) == 1
    return str(rows[0][0])


def write_csv(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_csv_file_is_loaded_once(nsql_engine: ClickHouse, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, ["id,name,score", "1,Ada,9.5", "2,Grace,", '3,"Lovelace, Ada",7'])
    first = load(nsql_engine, "people", f"file:{path}")
    assert first.status is ModelStatus.READY, first.error_message
    assert first.table == TableRef(nsql_engine.settings.database, "people")
    assert first.rows == 3
    assert admin_rows(nsql_engine, f"SELECT name, score FROM {first.table.sql} ORDER BY id") == [
        ("Ada", 9.5),
        ("Grace", None),
        ("Lovelace, Ada", 7.0),
    ]
    created = table_uuid(nsql_engine, first.table)

    # a restart finds the table complete and uses it as it is
    again = load(nsql_engine, "people", f"file://{path}")
    assert again.ready
    assert table_uuid(nsql_engine, first.table) == created

    # a changed file is loaded again
    write_csv(path, ["id,name,score", "1,Ada,9.5"])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = load(nsql_engine, "people", f"file:{path}")
    assert changed.rows == 1
    assert table_uuid(nsql_engine, first.table) != created


def test_relative_paths_tsv_and_parquet(nsql_engine: ClickHouse, tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("a\tb\n1\tx\n2\ty\n", encoding="utf-8")
    tsv = load(nsql_engine, "tsv_data", "file:t.tsv", base_dir=tmp_path)
    assert tsv.rows == 2, tsv.error_message

    parquet = tmp_path / "numbers.parquet"
    nsql_engine.admin(
        lambda client: client.command(
            f"INSERT INTO FUNCTION file('{parquet}', 'Parquet') "
            "SELECT number AS n, toDecimal64(number, 2) / 4 AS quarter FROM numbers(10)"
        )
    )
    loaded = load(nsql_engine, "numbers_data", f"file:{parquet}")
    assert loaded.rows == 10, loaded.error_message
    assert loaded.table is not None
    assert admin_rows(nsql_engine, f"SELECT sum(n), sum(quarter) FROM {loaded.table.sql}") == [
        (45, decimal.Decimal("11.25"))
    ]

    headerless = tmp_path / "raw.data"
    write_csv(headerless, ["1,one", "2,two"])
    raw = load(nsql_engine, "raw_data", f"file:{headerless}", file_format="csv", csv_has_header="false")
    assert raw.rows == 2, raw.error_message


def test_a_missing_file_is_a_dataset_error(nsql_engine: ClickHouse, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sales.csv"
    dataset = load(nsql_engine, "lost", f"file:{missing}")
    assert dataset.status is ModelStatus.ERROR
    assert not dataset.ready
    assert dataset.error is not None
    assert dataset.error.code == "dataset.not_found"
    assert dataset.error_message is not None
    assert str(missing) in dataset.error_message
    assert dataset.table is None


def test_a_broken_file_is_a_validation_error(nsql_engine: ClickHouse, tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    dataset = load(nsql_engine, "broken", f"file:{path}")
    assert dataset.error is not None
    assert dataset.error.code == "dataset.validation"
    assert dataset.error_message is not None
    assert str(path) in dataset.error_message


def test_existing_tables(nsql_engine: ClickHouse) -> None:
    found = load(nsql_engine, "canary", f"clickhouse:{CANARY}")
    assert found.ready
    assert found.table == CANARY
    assert found.rows == CANARY_ROWS

    for source, named in (
        ("clickhouse:nsql_test.no_such_table", "nsql_test.no_such_table"),
        ("clickhouse:no_such_db.canary", "no_such_db.canary"),
        ("clickhouse:canary", "default.canary"),  # unqualified: the connection's current database
    ):
        missing = load(nsql_engine, "missing", source)
        assert missing.status is ModelStatus.ERROR
        assert missing.error is not None
        assert missing.error.code == "dataset.not_found", source
        assert missing.error_message is not None
        assert named in missing.error_message


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("s3:bucket/key.csv", "dataset.validation"),
        ("no-scheme", "dataset.validation"),
        ("clickhouse:system.tables", "dataset.validation"),
        ("clickhouse:.table", "dataset.validation"),
        ("file:/tmp/data.xlsx", "dataset.validation"),
        ("sample:no_such_sample", "dataset.not_found"),
    ],
)
def test_bad_sources_are_reported(nsql_engine: ClickHouse, source: str, code: str) -> None:
    dataset = load(nsql_engine, "bad", source)
    assert dataset.status is ModelStatus.ERROR
    assert dataset.error is not None
    assert dataset.error.code == code
    assert dataset.error_message is not None
    assert "bad" in dataset.error_message


async def test_load_datasets_reports_each_dataset(nsql_engine: ClickHouse, tmp_path: Path) -> None:
    datasets = await load_datasets(
        nsql_engine,
        [
            DatasetConfig(name="canary", from_=f"clickhouse:{CANARY}"),
            DatasetConfig(name="lost", from_=f"file:{tmp_path}/lost.csv"),
            DatasetConfig(name="sales_data", from_="sample:sales_data"),
        ],
    )
    assert [d.status for d in datasets] == [ModelStatus.READY, ModelStatus.ERROR, ModelStatus.READY]


def test_the_sample_is_reused_and_regenerated_when_incomplete(
    nsql_engine: ClickHouse, sales_dataset: Dataset
) -> None:
    assert sales_dataset.table is not None
    generated = table_uuid(nsql_engine, sales_dataset.table)
    again = load(nsql_engine, "sales_data", "sample:sales_data")
    assert again.rows == 1_000_000
    assert table_uuid(nsql_engine, sales_dataset.table) == generated  # not generated a second time

    small = load(nsql_engine, "small_sales", "sample:sales_data", rows="1000")
    assert small.rows == 1000
    table = small.table
    assert table is not None
    first = table_uuid(nsql_engine, table)
    nsql_engine.admin(lambda client: client.command(f"INSERT INTO {table.sql} SELECT * FROM {table.sql}"))
    repaired = load(nsql_engine, "small_sales", "sample:sales_data", rows="1000")
    assert repaired.rows == 1000
    assert table_uuid(nsql_engine, table) != first


def test_the_sample_is_deterministic(nsql_engine: ClickHouse, sales_dataset: Dataset) -> None:
    assert sales_dataset.table is not None
    copy = load(nsql_engine, "sales_copy", "sample:sales_data")
    assert copy.table is not None

    def fingerprint(table: TableRef) -> list[tuple[object, ...]]:
        return admin_rows(
            nsql_engine,
            "SELECT count(), sum(total), sum(quantity), min(order_date), max(order_date), "
            "uniqExact(customer_id), groupBitXor(cityHash64(order_id, order_date, customer_id, "
            "customer_name, product, category, region, quantity, unit_price, total)) "
            f"FROM {table.sql}",
        )

    original = fingerprint(sales_dataset.table)
    assert fingerprint(copy.table) == original
    count, total, *_ = original[0]
    assert count == 1_000_000
    assert total == decimal.Decimal("918471272.98")  # the same on every machine: integer hashes only

    table = sales_dataset.table.sql
    top = admin_rows(
        nsql_engine,
        f"SELECT customer_id, customer_name, sum(total) AS s FROM {table} GROUP BY ALL "
        "ORDER BY s DESC LIMIT 1 SETTINGS optimize_use_projections = 0",
    )
    assert top == [(1, "Olivia Smith", decimal.Decimal("4610412.18"))]
    invariants = admin_rows(
        nsql_engine,
        "SELECT countIf(total != unit_price * quantity), uniqExact(customer_id), uniqExact(customer_name), "
        "uniqExact(customer_id, customer_name), uniqExact(customer_id, region), max(customer_id), "
        f"min(order_date), max(order_date) FROM {table}",
    )
    wrong_totals, customers, names, pairs, regions, top_id, first, last = invariants[0]
    assert wrong_totals == 0
    assert customers == names == pairs == regions  # one name and one region per customer
    assert 1900 < customers <= top_id <= 2000
    assert (str(first), str(last)) == ("2022-01-01", "2025-12-31")


def test_data_directories_are_claimed_one_per_worker(tmp_path: Path) -> None:
    first = claim_data_dir(tmp_path)
    second = claim_data_dir(tmp_path)
    assert (first.path.name, second.path.name) == ("0", "1")
    first.release()
    with claim_data_dir(tmp_path) as reclaimed:
        assert reclaimed.path == first.path
    second.release()


def test_engine_configuration_errors() -> None:
    with pytest.raises(EngineError, match="data directory"):
        ClickHouse.open(ClickHouseSettings())
    with pytest.raises(EngineError, match="http"):
        ClickHouse.open(ClickHouseSettings(url="ftp://example.invalid"))
