"""The query parameters of ``/v1/models``, checked: ``status``, ``format`` and ``metadata_fields``.

Values are case-insensitive. A bad value is a 400 that names it and the values allowed. An empty
``metadata_fields`` (or empty items in it) means no metadata, unlike Spice v1.6, which failed every call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from modelbus.ingress.errors import ApiError

__all__ = (
    "METADATA_FIELDS",
    "ModelQuery",
    "OutputFormat",
    "parse_bool",
    "parse_format",
    "parse_metadata_fields",
)

METADATA_FIELDS = ("supports_responses_api",)
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_ECHO_MAX = 100


class OutputFormat(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


@dataclass(frozen=True, slots=True)
class ModelQuery:
    status: bool = False
    format: OutputFormat = OutputFormat.JSON
    metadata: tuple[str, ...] = ()


def _echo(value: str) -> str:
    return value if len(value) <= _ECHO_MAX else value[:_ECHO_MAX] + "..."


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def parse_bool(param: str, raw: str | None) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _invalid(param, f"Invalid value for '{param}': '{_echo(raw)}'. Use true or false (or 1 or 0).")


def parse_format(raw: str | None) -> OutputFormat:
    if raw is None:
        return OutputFormat.JSON
    try:
        return OutputFormat(raw.strip().lower())
    except ValueError:
        valid = " or ".join(f.value for f in OutputFormat)
        raise _invalid("format", f"Invalid format: '{_echo(raw)}'. Use {valid}.") from None


def parse_metadata_fields(raw: str | None) -> tuple[str, ...]:
    """The requested fields in canonical order; empty items are ignored."""
    if not raw:
        return ()
    requested = {item.strip() for item in raw.split(",")} - {""}
    for field in sorted(requested):
        if field.lower() not in METADATA_FIELDS:
            known = ", ".join(METADATA_FIELDS)
            raise _invalid(
                "metadata_fields", f"Invalid metadata field: {_echo(field)}. Known fields: {known}."
            )
    lowered = {field.lower() for field in requested}
    return tuple(f for f in METADATA_FIELDS if f in lowered)
