"""Datasets from config, made ready on ClickHouse at start.

``from:`` forms:

- ``clickhouse:db.table`` or ``clickhouse:table`` (the connection's current database): an existing table
  or view; it must exist, nothing is created;
- ``file:/path/x.csv`` (also ``file://``, ``.tsv``, ``.parquet``; a relative path is relative to
  ``base_dir``): loaded into the embedded engine as ``<runtime.clickhouse.database>.<name>``.
  ``params.file_format`` overrides the extension (``csv``, ``tsv``, ``parquet``), ``params.csv_has_header:
  "false"`` reads a CSV without a header row;
- ``history:task_history``: the task history table (``runtime.history``) in ``<database>``, created empty
  when missing; the history sink fills it (with the embedded engine, the NSQL worker runs that sink);
- ``sample:sales_data``, ``sample:customers``, ``sample:products``: the built-in deterministic samples
  (``sample_data.py``), each generated on its own into ``<database>.<name>``; ``params.rows`` changes the
  size of ``sales_data`` and is refused for the two fixed-size samples (2000 customers, 28 products).

Loading is idempotent across restarts of one data directory: a loaded table carries a comment naming its
source (generator version, or file path, size and mtime) and its row count; when both still match, the
table is used as it is. Loads replace tables atomically (``CREATE OR REPLACE``), so a crash mid-load leaves
the previous table or none, never half of one.

A dataset that cannot be made ready (missing file or table, unreadable file, bad config) is reported with
status ``error``, a structured ``error`` (``dataset.not_found``, ``dataset.validation``, ...) and a message
naming the file or table; loading never raises for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import structlog
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError

from modelbus.config.model import DatasetConfig, DatasetExample
from modelbus.history.table import ensure_history_table
from modelbus.runtime.clickhouse.engine import ClickHouse, engine_message
from modelbus.runtime.clickhouse.names import TableRef, quote_string
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.workers.nsql import sample_data

__all__ = (
    "ClickHouseSource",
    "Dataset",
    "DatasetError",
    "FileSource",
    "HistorySource",
    "SampleSource",
    "Source",
    "load_dataset",
    "load_datasets",
    "parse_source",
)

log = structlog.get_logger(__name__)

_FORMATS = {"csv": "CSVWithNames", "tsv": "TSVWithNames", "parquet": "Parquet"}
_SYSTEM_DATABASES = frozenset({"system", "information_schema"})
_FILE_MARKER_VERSION = 1


class DatasetError(Exception):
    """Why a dataset cannot be made ready; becomes the dataset's ``error`` and ``error_message``."""

    def __init__(self, type_: ErrorType, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


class ClickHouseSource(msgspec.Struct, frozen=True):
    table: str
    database: str | None = None  # None: the connection's current database


class FileSource(msgspec.Struct, frozen=True):
    path: Path
    format: str  # a ClickHouse input format name


class SampleSource(msgspec.Struct, frozen=True):
    spec: sample_data.SampleSpec
    rows: int


class HistorySource(msgspec.Struct, frozen=True):
    table: str  # in runtime.clickhouse.database; created (empty) when missing


Source = ClickHouseSource | FileSource | SampleSource | HistorySource


class Dataset(msgspec.Struct, frozen=True, kw_only=True):
    """A configured dataset and where it stands. ``table`` is set when ``status`` is ``ready``."""

    name: str
    source: str
    description: str | None = None
    status: ModelStatus
    examples: tuple[DatasetExample, ...] = ()  # for the prompt: the config's, else a sample's built-in ones
    primary_key: str | None = None
    table: TableRef | None = None
    rows: int | None = None
    error: ErrorInfo | None = None
    error_message: str | None = None

    @property
    def ready(self) -> bool:
        return self.status is ModelStatus.READY and self.table is not None


def parse_source(config: DatasetConfig, *, base_dir: Path) -> Source:
    """The dataset's ``from:`` as a typed source; :class:`DatasetError` (validation) when malformed."""
    scheme, sep, rest = config.from_.partition(":")
    if not sep or not rest:
        raise DatasetError(
            ErrorType.VALIDATION,
            f"dataset {config.name!r}: 'from: {config.from_}' is not one of clickhouse:<db.table>, "
            "history:<table>, "
            "file:<path> or sample:<name>",
        )
    if scheme == "clickhouse":
        database, dot, table = rest.partition(".")
        if dot and (not database or not table):
            raise DatasetError(ErrorType.VALIDATION, f"dataset {config.name!r}: {rest!r} is not <db>.<table>")
        if dot and database.lower() in _SYSTEM_DATABASES:
            raise DatasetError(
                ErrorType.VALIDATION, f"dataset {config.name!r}: system tables cannot be datasets"
            )
        return ClickHouseSource(table=table, database=database) if dot else ClickHouseSource(table=rest)
    if scheme == "file":
        return _file_source(config, rest, base_dir)
    if scheme == "history":
        return HistorySource(table=rest)
    if scheme == "sample":
        spec = sample_data.SAMPLES.get(rest)
        if spec is None:
            known = ", ".join(sorted(sample_data.SAMPLES))
            raise DatasetError(
                ErrorType.NOT_FOUND, f"dataset {config.name!r}: no sample {rest!r} (there is {known})"
            )
        return SampleSource(spec=spec, rows=_sample_rows(config, spec))
    raise DatasetError(
        ErrorType.VALIDATION,
        f"dataset {config.name!r}: unsupported source {scheme!r}; "
        "use clickhouse:, file:, sample: or history:",
    )


def _file_source(config: DatasetConfig, rest: str, base_dir: Path) -> FileSource:
    path = Path(rest[2:] if rest.startswith("//") else rest).expanduser()
    path = (base_dir / path).resolve() if not path.is_absolute() else path
    kind = config.params.get("file_format", path.suffix.lstrip(".")).lower()
    if kind not in _FORMATS:
        raise DatasetError(
            ErrorType.VALIDATION,
            f"dataset {config.name!r}: cannot tell the format of {str(path)!r}; "
            "name it .csv, .tsv or .parquet, or set params.file_format",
        )
    fmt = _FORMATS[kind]
    if kind in ("csv", "tsv") and config.params.get("csv_has_header", "true").lower() == "false":
        fmt = fmt.removesuffix("WithNames")
    return FileSource(path=path, format=fmt)


def _sample_rows(config: DatasetConfig, spec: sample_data.SampleSpec) -> int:
    """The sample's size: ``params.rows`` for a resizable sample; refused for a fixed-size one, whose size
    is what it describes (every customer id, every product), so a smaller table would break joins."""
    if spec.resizable:
        return _positive_int(config, "rows", spec.rows)
    if "rows" in config.params:
        raise DatasetError(
            ErrorType.VALIDATION,
            f"dataset {config.name!r}: sample:{spec.name} has a fixed size ({spec.rows} rows); "
            "remove params.rows",
        )
    return spec.rows


def _positive_int(config: DatasetConfig, key: str, default: int) -> int:
    raw = config.params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DatasetError(
            ErrorType.VALIDATION, f"dataset {config.name!r}: params.{key} must be a positive integer"
        )
    return value


async def load_datasets(
    engine: ClickHouse,
    configs: Sequence[DatasetConfig],
    *,
    base_dir: Path | None = None,
    history_keep_days: int = 0,
) -> list[Dataset]:
    """Make every configured dataset ready, one after the other, in a worker thread. Never raises for a
    dataset's own problem: that dataset comes back with status ``error``. A ``history:`` table created here
    gets ``history_keep_days`` as its TTL."""
    base = base_dir or Path.cwd()
    load = partial(_load, engine, base_dir=base, history_keep_days=history_keep_days)
    return [await engine.run_admin(partial(load, config=config)) for config in configs]


def load_dataset(engine: ClickHouse, config: DatasetConfig, *, base_dir: Path | None = None) -> Dataset:
    """:func:`load_datasets` for one dataset, blocking, in the calling thread."""
    return engine.admin(partial(_load, engine, config=config, base_dir=base_dir or Path.cwd()))


def _load(
    engine: ClickHouse, client: Any, *, config: DatasetConfig, base_dir: Path, history_keep_days: int = 0
) -> Dataset:
    log_ = log.bind(dataset=config.name, source=config.from_)
    try:
        source = parse_source(config, base_dir=base_dir)
        if isinstance(source, ClickHouseSource):
            table, rows = _existing_table(client, source)
        elif isinstance(source, FileSource):
            table, rows = _load_file(engine, client, config.name, source)
        elif isinstance(source, HistorySource):
            table_ref = TableRef(engine.settings.database, source.table)
            ensure_history_table(client, table_ref, keep_days=history_keep_days)
            table, rows = _existing_table(client, ClickHouseSource(source.table, engine.settings.database))
        else:
            table, rows = _load_sample(engine, client, config.name, source)
    except DatasetError as exc:
        log_.warning("dataset.error", error_type=exc.type.value, message=exc.message)
        return _failed(config, exc.type, exc.message)
    except Error as exc:
        type_ = ErrorType.CONNECTION if _is_connection_error(exc) else ErrorType.INTERNAL
        message = f"dataset {config.name!r}: {engine_message(exc)}"
        log_.warning("dataset.error", error_type=type_.value, message=message)
        return _failed(config, type_, message)
    log_.info("dataset.ready", table=str(table), rows=rows)
    return Dataset(
        name=config.name,
        source=config.from_,
        description=config.description or _default_description(config),
        status=ModelStatus.READY,
        examples=_examples(config),
        primary_key=config.primary_key,
        table=table,
        rows=rows,
    )


def _failed(config: DatasetConfig, type_: ErrorType, message: str) -> Dataset:
    return Dataset(
        name=config.name,
        source=config.from_,
        description=config.description,
        status=ModelStatus.ERROR,
        error=ErrorInfo.of(ErrorCategory.DATASET, type_),
        error_message=message,
    )


def _is_connection_error(exc: Error) -> bool:
    return isinstance(exc, OperationalError) and exc.code is None


def _sample_spec(config: DatasetConfig) -> sample_data.SampleSpec | None:
    scheme, _, name = config.from_.partition(":")
    return sample_data.SAMPLES.get(name) if scheme == "sample" else None


def _default_description(config: DatasetConfig) -> str | None:
    spec = _sample_spec(config)
    return spec.description if spec else None


def _examples(config: DatasetConfig) -> tuple[DatasetExample, ...]:
    if config.examples is not None:
        return config.examples
    spec = _sample_spec(config)
    return spec.examples if spec else ()


def _scalar(client: Any, sql: str) -> Any:
    rows = client.query(sql).result_rows
    return rows[0][0] if rows else None


def _table_comment(client: Any, table: TableRef) -> str | None:
    rows = client.query(
        "SELECT comment FROM system.tables WHERE database = {db:String} AND name = {name:String}",
        parameters={"db": table.database, "name": table.table},
    ).result_rows
    return str(rows[0][0]) if rows else None


def _existing_table(client: Any, source: ClickHouseSource) -> tuple[TableRef, int | None]:
    database = source.database or str(_scalar(client, "SELECT currentDatabase()"))
    table = TableRef(database, source.table)
    if not int(_scalar(client, f"EXISTS TABLE {table.sql}") or 0):
        raise DatasetError(ErrorType.NOT_FOUND, f"table {table} not found")
    rows = client.query(
        "SELECT total_rows FROM system.tables WHERE database = {db:String} AND name = {name:String}",
        parameters={"db": table.database, "name": table.table},
    ).result_rows
    total = rows[0][0] if rows else None
    return table, int(total) if total is not None else None


def _load_sample(engine: ClickHouse, client: Any, name: str, source: SampleSource) -> tuple[TableRef, int]:
    table = TableRef(engine.settings.database, name)
    expected = sample_data.marker(source.spec, source.rows)
    if _table_comment(client, table) == expected and _count(client, table) == source.rows:
        log.info("dataset.reused", dataset=name, table=str(table))
        return table, source.rows
    client.command(sample_data.create_statement(table, source.rows, spec=source.spec))
    return table, _count(client, table)


def _load_file(engine: ClickHouse, client: Any, name: str, source: FileSource) -> tuple[TableRef, int]:
    if not engine.embedded:
        raise DatasetError(
            ErrorType.VALIDATION,
            f"file {str(source.path)!r}: file datasets are loaded into the embedded engine only "
            "(runtime.clickhouse.url: embedded); load it into the server and use clickhouse:<db.table>",
        )
    path = source.path
    if not path.exists():
        raise DatasetError(ErrorType.NOT_FOUND, f"file {str(path)!r} not found")
    if not path.is_file():
        raise DatasetError(ErrorType.VALIDATION, f"{str(path)!r} is not a file")
    if not os.access(path, os.R_OK):
        raise DatasetError(ErrorType.PERMISSION, f"file {str(path)!r} is not readable")
    stat = path.stat()
    fingerprint = (
        f"modelbus:file:v{_FILE_MARKER_VERSION}:{path}:{stat.st_size}:{stat.st_mtime_ns}:{source.format}"
    )
    table = TableRef(engine.settings.database, name)
    comment = _table_comment(client, table)
    if comment is not None and comment.startswith(fingerprint + ":rows="):
        rows = _count(client, table)
        if comment == f"{fingerprint}:rows={rows}":
            log.info("dataset.reused", dataset=name, table=str(table))
            return table, rows
    try:
        client.command(
            f"CREATE OR REPLACE TABLE {table.sql} ENGINE = MergeTree ORDER BY tuple() "  # noqa: S608 - quoted
            f"COMMENT {quote_string(fingerprint)} "
            f"AS SELECT * FROM file({quote_string(str(path))}, {quote_string(source.format)})"
        )
    except DatabaseError as exc:
        if _is_connection_error(exc):
            raise
        raise DatasetError(
            ErrorType.VALIDATION, f"file {str(path)!r} could not be loaded: {engine_message(exc)}"
        ) from exc
    rows = _count(client, table)
    client.command(f"ALTER TABLE {table.sql} MODIFY COMMENT {quote_string(f'{fingerprint}:rows={rows}')}")
    return table, rows


def _count(client: Any, table: TableRef) -> int:
    return int(_scalar(client, f"SELECT count() FROM {table.sql}") or 0)  # noqa: S608 - a quoted name
