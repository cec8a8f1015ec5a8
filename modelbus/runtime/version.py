"""modelbus's version, from the installed package's metadata (pyproject.toml is the one place it is set)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

__all__ = ("package_version",)


@cache
def package_version() -> str:
    try:
        return version("modelbus")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
