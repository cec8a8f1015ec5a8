"""Table references and identifier quoting, shared by the loader, the guard and the context builder."""

from __future__ import annotations

import msgspec

__all__ = ("TableRef", "quote_identifier", "quote_string")


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backticks, safe for any name (backticks and backslashes escaped)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    """A ClickHouse string literal in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class TableRef(msgspec.Struct, frozen=True):
    """A real ClickHouse table: ``database.table``."""

    database: str
    table: str

    @property
    def sql(self) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(self.table)}"

    def __str__(self) -> str:
        return f"{self.database}.{self.table}"
