"""The one error a configuration problem raises: where it is, what is wrong, and how to fix it."""

from __future__ import annotations

__all__ = ("ConfigError",)


class ConfigError(Exception):
    """A configuration problem, with where it is and how to fix it."""

    def __init__(self, source: str, key: str, problem: str, fix: str) -> None:
        self.source, self.key, self.problem, self.fix = source, key, problem, fix
        super().__init__(f"{source}: {key or '(top level)'}: {problem}. Fix: {fix}")
