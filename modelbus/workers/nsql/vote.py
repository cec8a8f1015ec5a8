"""A vote over candidate answers: the result most candidates agree on wins, not the likeliest SQL.

Several statements that compute the same thing differently (``count(DISTINCT x)`` and ``uniqExact(x)``,
a join or an ``IN`` subquery) agree on their rows, and sampled mistakes rarely agree with each other. Rows
are compared as a multiset of value multisets, so column names and order do not split a vote. An empty
answer (no rows, or one row of nulls) only wins when nothing else ran. Ties go to the earliest candidate:
the greedy one is first.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import msgspec

from modelbus.runtime.clickhouse.engine import QueryResult

__all__ = ("Tally", "result_key", "tally", "winner")


def _value_key(value: Any) -> str:
    return repr(value)


def result_key(result: QueryResult | None) -> Hashable:
    """What two results that answer alike share: their rows, each row's values in any order."""
    if result is None:
        return None
    rows = (tuple(sorted(_value_key(v) for v in row)) for row in result.rows)
    return tuple(sorted(rows))


def _empty(result: QueryResult | None) -> bool:
    if result is None:
        return False
    return not result.rows or (len(result.rows) == 1 and all(v is None for v in result.rows[0]))


class Tally(msgspec.Struct, frozen=True):
    """The winning candidate's index and how many candidates share its result (itself included)."""

    index: int
    agreeing: int


def tally(results: Sequence[QueryResult | None]) -> Tally:
    """The vote (see the module docstring). One candidate wins alone, without comparing its rows."""
    if not results:
        raise ValueError("no candidates to vote on")
    if len(results) == 1:
        return Tally(0, 1)
    votes: dict[Hashable, list[int]] = {}
    for i, result in enumerate(results):
        votes.setdefault(result_key(result), []).append(i)

    def rank(members: list[int]) -> tuple[bool, int, int]:
        return (not _empty(results[members[0]]), len(members), -members[0])

    members = max(votes.values(), key=rank)
    return Tally(members[0], len(members))


def winner(results: Sequence[QueryResult | None]) -> int:
    """The index of the candidate whose result most candidates share."""
    return tally(results).index
