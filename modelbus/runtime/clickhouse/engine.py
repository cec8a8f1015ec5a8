"""ClickHouse through clickhouse-connect: embedded (chdb, in-process) or a server over HTTP, same code.

A :class:`ClickHouse` holds two kinds of connection:

- one **admin** client for trusted work (creating databases, loading datasets, DESCRIBE);
- a small pool of **reader** clients for untrusted, model-written SQL. Each reader is its own connection
  (for chdb its own engine handle, which serialises calls; for HTTP its own client with session ids off),
  so concurrent queries never share a session. Readers get the execution limits as connection settings and
  then ``readonly = 1`` *last*: from then on the connection cannot change any setting, so neither a
  ``SETTINGS`` clause nor ``SET`` can lift a limit. Opening checks that this took effect.

Why ``readonly = 1`` on an ordinary handle and not chdb's ``mode=ro``, measured with chdb-core 26.9:
``mode=ro`` gives ``readonly = 2``, which still lets a query change its limits, read files with
``file()`` and even write them with ``INSERT INTO FUNCTION file(...)``; ``readonly = 1`` refuses all three.
Neither stops ``SELECT ... INTO OUTFILE`` or the scalar ``file()`` function, and chdb runs several
``;``-separated statements in one call: the guard (``guard.py``) refuses those before anything runs.

Against a ClickHouse server the same settings ride on every request (verified here on chdb only, since no
server can be installed on these machines); there, a dedicated read-only user whose settings profile fixes
these limits as constraints is the belt to these braces.

All calls block; the async helpers run them in worker threads behind bounded limiters, never on the loop.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import clickhouse_connect
import msgspec
import structlog

from modelbus.config.model import ClickHouseSettings
from modelbus.runtime.clickhouse.names import quote_identifier

__all__ = (
    "ClickHouse",
    "Column",
    "EngineError",
    "QueryResult",
    "base_type",
    "engine_message",
    "is_nullable",
    "reader_settings",
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
Client = Any  # clickhouse_connect.driver.client.Client (untyped package)


class EngineError(Exception):
    """The engine could not be opened or set up (bad URL, data directory locked, limits not applied)."""


def _unwrap(type_name: str, wrapper: str) -> str | None:
    prefix = f"{wrapper}("
    if type_name.startswith(prefix) and type_name.endswith(")"):
        return type_name[len(prefix) : -1]
    return None


def base_type(type_name: str) -> str:
    """``LowCardinality(Nullable(String))`` -> ``String``: the value type without its wrappers."""
    for wrapper in ("LowCardinality", "Nullable"):
        inner = _unwrap(type_name, wrapper)
        if inner is not None:
            type_name = inner
    return type_name


def is_nullable(type_name: str) -> bool:
    inner = _unwrap(type_name, "LowCardinality")
    return (inner or type_name).startswith("Nullable(")


class Column(msgspec.Struct, frozen=True):
    """A result column: its name and its ClickHouse type as the engine reports it."""

    name: str
    type: str

    @property
    def nullable(self) -> bool:
        return is_nullable(self.type)

    @property
    def base_type(self) -> str:
        return base_type(self.type)


class QueryResult(msgspec.Struct, frozen=True):
    columns: tuple[Column, ...]
    rows: list[tuple[Any, ...]]


def reader_settings(settings: ClickHouseSettings) -> dict[str, Any]:
    """The reader connection's settings, in the order they must be applied: ``readonly`` last."""
    return {
        "max_execution_time": settings.max_execution_time,
        "timeout_overflow_mode": "throw",
        "max_result_rows": settings.max_result_rows,
        "max_result_bytes": settings.max_result_bytes,
        "result_overflow_mode": "throw",
        "max_memory_usage": settings.max_memory_usage,
        "readonly": 1,
    }


class ClickHouse:
    """One engine: an admin client and a pool of read-only, limited reader clients.

    Open with :meth:`open` (blocking; call it from a thread in async code, or before the loop starts) and
    close with :meth:`close` or ``with``.
    """

    def __init__(self, settings: ClickHouseSettings, admin: Client, readers: list[Client]) -> None:
        self.settings = settings
        self._admin = admin
        self._readers = readers
        self._pool: queue.SimpleQueue[Client] = queue.SimpleQueue()
        for reader in readers:
            self._pool.put(reader)
        self._admin_lock = threading.Lock()
        self._admin_limiter = anyio.CapacityLimiter(1)
        self._reader_limiter = anyio.CapacityLimiter(len(readers))
        self._closed = False

    @classmethod
    def open(cls, settings: ClickHouseSettings, *, data_dir: Path | None = None) -> ClickHouse:
        """Connect, create the dataset and sandbox databases, and open the reader pool.

        Embedded: ``data_dir`` (or ``settings.data_dir``) is the engine's data directory; chdb allows one
        data directory per process and one process per directory.
        """
        if settings.embedded:
            chosen = data_dir or (Path(settings.data_dir) if settings.data_dir else None)
            if chosen is None:
                raise EngineError("the embedded ClickHouse engine needs a data directory")
            chosen.mkdir(parents=True, exist_ok=True)
            data_dir = chosen
        admin = _connect(settings, data_dir, database=None, client_settings={})
        readers: list[Client] = []
        try:
            for name in (settings.database, settings.sandbox_database):
                admin.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(name)}")
            for _ in range(settings.readers):
                reader = _connect(
                    settings,
                    data_dir,
                    database=settings.sandbox_database,
                    client_settings=reader_settings(settings),
                )
                readers.append(reader)
                _check_reader(reader)
        except BaseException:
            for client in (*readers, admin):
                client.close()
            raise
        log.info(
            "clickhouse.open",
            url="embedded" if settings.embedded else _redacted(settings.url),
            data_dir=str(data_dir) if data_dir else None,
            readers=len(readers),
        )
        return cls(settings, admin, readers)

    @property
    def embedded(self) -> bool:
        return self.settings.embedded

    def admin(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn(admin_client)`` now, in this thread (blocking). Trusted SQL only."""
        with self._admin_lock:
            return fn(self._admin)

    def read(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn(reader_client)`` now, in this thread, on a reader borrowed from the pool (blocking)."""
        reader = self._pool.get()
        try:
            return fn(reader)
        finally:
            self._pool.put(reader)

    async def run_admin(self, fn: Callable[[Client], T]) -> T:
        """:meth:`admin` in a worker thread, one at a time."""
        return await anyio.to_thread.run_sync(self.admin, fn, limiter=self._admin_limiter)

    async def run_read(self, fn: Callable[[Client], T]) -> T:
        """:meth:`read` in a worker thread; at most ``settings.readers`` at once.

        If the caller is cancelled it returns at once; the query itself ends by its ``max_execution_time``
        and its reader then goes back to the pool.
        """
        return await anyio.to_thread.run_sync(
            self.read, fn, limiter=self._reader_limiter, abandon_on_cancel=True
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in (*self._readers, self._admin):
            try:
                client.close()
            except Exception:  # closing must not stop closing the others
                log.warning("clickhouse.close_failed", exc_info=True)

    def __enter__(self) -> ClickHouse:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _connect(
    settings: ClickHouseSettings,
    data_dir: Path | None,
    *,
    database: str | None,
    client_settings: dict[str, Any],
) -> Client:
    if not settings.embedded and urlsplit(settings.url).scheme not in ("http", "https"):
        raise EngineError(
            f"runtime.clickhouse.url must be 'embedded' or an http(s) URL, not {settings.url!r}"
        )
    try:
        if settings.embedded:
            return clickhouse_connect.get_client(
                interface="chdb",
                path=str(data_dir),
                database=database,
                settings=client_settings,
                tz_mode="schema",
            )
        return clickhouse_connect.get_client(
            dsn=settings.url,
            username=settings.username,
            password=settings.password or "",
            database=database,
            settings=client_settings,
            tz_mode="schema",
            autogenerate_session_id=False,
        )
    except Exception as exc:
        where = f"the data directory {data_dir}" if settings.embedded else _redacted(settings.url)
        raise EngineError(f"cannot open ClickHouse at {where}: {exc or type(exc).__name__}") from exc


def _check_reader(reader: Client) -> None:
    rows = reader.query("SELECT getSetting('readonly'), currentDatabase()").result_rows
    readonly, _database = rows[0]
    if int(readonly) != 1:
        raise EngineError(f"the reader connection is not read-only (readonly = {readonly})")


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


_CODE_PREFIX = re.compile(r"^(?:Code:\s*\d+\.\s*)?(?:DB::Exception:\s*)", re.IGNORECASE)
_VERSION_TRAILER = re.compile(r"\s*\(version [^()]*(?:\([^()]*\))?[^()]*\)\s*\.?\s*$")
_TRAILING_NAME = re.compile(r"\s*\(([A-Z][A-Z0-9_]+)\)\s*$")


def engine_message(exc: BaseException, *, limit: int = 600) -> str:
    """A ClickHouse error as one readable line: no ``Code: N. DB::Exception:`` prefixes, version trailer,
    stack trace or repeated error name; long messages are cut at ``limit`` characters."""
    text = str(exc).strip() or type(exc).__name__
    text = text.split("Stack trace", 1)[0].strip()
    name = None
    for _ in range(3):  # chdb nests "Code: N. DB::Exception: Code: N. DB::Exception: ..."
        text = _CODE_PREFIX.sub("", text).strip()
        text = _VERSION_TRAILER.sub("", text).strip()
        match = _TRAILING_NAME.search(text)
        if match:
            name = name or match.group(1)
            text = text[: match.start()].strip().rstrip(".")
    text = " ".join(text.split())
    if name:
        text = f"{text} ({name})"
    return text if len(text) <= limit else text[: limit - 1] + "…"
