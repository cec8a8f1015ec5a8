"""Datasets from config on the real engine: files and samples loaded once, existing tables found, and
clear, structured errors for what cannot be loaded."""

from __future__ import annotations

import decimal
import os
from pathlib import Path

import pytest

from modelbus.config.model import ClickHouseSettings, DatasetConfig
from modelbus.runtime.clickhouse.datadir import claim_data_dir
from modelbus.runtime.clickhouse.engine import ClickHouse, EngineError
from modelbus.runtime.clickhouse.names import TableRef
from modelbus.schemas.status import ModelStatus
from modelbus.workers.nsql.datasets import Dataset, load_dataset, load_datasets
from tests.support.nsql_fixtures import CANARY, CANARY_ROWS, admin_rows, nsql_engine, sales_dataset

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


CUSTOMER_COLUMNS = [
    ("customer_id", "UInt32"),
    ("customer_name", "String"),
    ("segment", "LowCardinality(String)"),
    ("region", "LowCardinality(String)"),
    ("country", "LowCardinality(String)"),
    ("signup_date", "Date"),
]
PRODUCT_COLUMNS = [
    ("product", "String"),
    ("category", "LowCardinality(String)"),
    ("supplier", "LowCardinality(String)"),
    ("list_price", "Decimal(10, 2)"),
    ("unit_cost", "Decimal(10, 2)"),
]
COUNTRIES = {
    "North America": {"United States", "Canada", "Mexico"},
    "Europe": {"Germany", "France", "United Kingdom", "Italy"},
    "Asia Pacific": {"Japan", "Australia", "India", "Singapore"},
    "Latin America": {"Brazil", "Argentina", "Chile", "Colombia"},
    "Middle East & Africa": {"United Arab Emirates", "Saudi Arabia", "South Africa", "Nigeria"},
}


def columns(engine: ClickHouse, table: TableRef) -> list[tuple[object, ...]]:
    return admin_rows(
        engine,
        f"SELECT name, type FROM system.columns WHERE database = '{table.database}' "
        f"AND table = '{table.table}' ORDER BY position",
    )


def checksum(engine: ClickHouse, table: TableRef) -> int:
    rows = admin_rows(engine, f"SELECT groupBitXor(cityHash64(*)) FROM {table.sql}")
    return int(str(rows[0][0]))


def double_rows(engine: ClickHouse, table: TableRef) -> None:
    sql = f"INSERT INTO {table.sql} SELECT * FROM {table.sql}"
    engine.admin(lambda client: client.command(sql))


def ready_table(dataset: Dataset) -> TableRef:
    assert dataset.ready, dataset.error_message
    assert dataset.table is not None
    return dataset.table


def test_the_join_samples_have_their_columns_and_sizes(nsql_engine: ClickHouse) -> None:
    customers = load(nsql_engine, "customers", "sample:customers")
    products = load(nsql_engine, "products", "sample:products")
    assert columns(nsql_engine, ready_table(customers)) == CUSTOMER_COLUMNS
    assert columns(nsql_engine, ready_table(products)) == PRODUCT_COLUMNS
    assert (customers.rows, products.rows) == (2000, 28)
    assert customers.description is not None
    assert "customer_id" in customers.description
    assert products.description is not None
    assert "product" in products.description

    table = ready_table(customers).sql
    ids = admin_rows(
        nsql_engine, f"SELECT min(customer_id), max(customer_id), uniqExact(customer_id) FROM {table}"
    )
    assert ids == [(1, 2000, 2000)]
    segments = admin_rows(nsql_engine, f"SELECT DISTINCT segment FROM {table} ORDER BY segment")
    assert [s for (s,) in segments] == ["Consumer", "Enterprise", "Public Sector", "Small Business"]
    places = admin_rows(nsql_engine, f"SELECT DISTINCT region, country FROM {table}")
    found: dict[str, set[str]] = {}
    for region, country in places:
        found.setdefault(str(region), set()).add(str(country))
    assert found == COUNTRIES
    dates = admin_rows(nsql_engine, f"SELECT min(signup_date), max(signup_date) FROM {table}")
    first, last = (str(d) for d in dates[0])
    assert "2019-01-01" <= first <= last <= "2024-12-31"

    suppliers = admin_rows(nsql_engine, f"SELECT uniqExact(supplier) FROM {ready_table(products).sql}")
    assert suppliers == [(7,)]


def test_the_join_samples_agree_with_sales_data(nsql_engine: ClickHouse) -> None:
    sales = ready_table(load(nsql_engine, "sales_20k", "sample:sales_data", rows="20000")).sql
    customers = ready_table(load(nsql_engine, "customers", "sample:customers")).sql
    products = ready_table(load(nsql_engine, "products", "sample:products")).sql

    by_customer = admin_rows(
        nsql_engine,
        f"SELECT count(), countIf(c.customer_name != s.customer_name OR c.region != s.region) "
        f"FROM {sales} AS s INNER JOIN {customers} AS c ON c.customer_id = s.customer_id",
    )
    assert by_customer == [(20000, 0)]  # every order finds its customer, with the same name and region
    by_product = admin_rows(
        nsql_engine,
        f"SELECT count(), countIf(p.category != s.category OR p.list_price != s.unit_price) "
        f"FROM {sales} AS s INNER JOIN {products} AS p ON p.product = s.product",
    )
    assert by_product == [(20000, 0)]
    catalogue = admin_rows(
        nsql_engine,
        f"SELECT count() FROM (SELECT DISTINCT product, category, unit_price FROM {sales}) AS s "
        f"FULL OUTER JOIN {products} AS p ON p.product = s.product "
        "WHERE s.product = '' OR p.product = '' OR p.category != s.category OR p.list_price != s.unit_price",
    )
    assert catalogue == [(0,)]  # the same 28 products both ways
    costs = admin_rows(
        nsql_engine,
        f"SELECT countIf(unit_cost * 100 < list_price * 45 OR unit_cost * 100 > list_price * 80), "
        f"min(unit_cost / list_price) < max(unit_cost / list_price) FROM {products}",
    )
    assert costs == [(0, True)]


def test_the_join_samples_are_deterministic_and_reused(nsql_engine: ClickHouse) -> None:
    for name, size, expected in (
        ("customers", 2000, 6354660947383362428),
        ("products", 28, 1440624376352391657),
    ):
        table = ready_table(load(nsql_engine, name, f"sample:{name}"))
        copy = ready_table(load(nsql_engine, f"{name}_copy", f"sample:{name}"))
        assert checksum(nsql_engine, table) == checksum(nsql_engine, copy) == expected  # on every machine

        generated = table_uuid(nsql_engine, table)
        again = load(nsql_engine, name, f"sample:{name}")  # a restart: the marker is there
        assert again.rows == size
        assert table_uuid(nsql_engine, table) == generated  # not generated a second time

        double_rows(nsql_engine, table)  # an incomplete or tampered table is generated again
        repaired = load(nsql_engine, name, f"sample:{name}")
        assert repaired.rows == size
        assert table_uuid(nsql_engine, table) != generated
        assert checksum(nsql_engine, table) == expected

        refused = load(nsql_engine, f"{name}_small", f"sample:{name}", rows="100")
        assert refused.error is not None
        assert refused.error.code == "dataset.validation"
        assert refused.error_message is not None
        assert "fixed size" in refused.error_message


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
