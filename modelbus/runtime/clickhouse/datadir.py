"""A data directory of one's own for an embedded engine.

chdb allows one process per data directory (a second one is locked out with an almost empty error), and
the sample and file datasets loaded there should survive a restart. Each NSQL worker therefore claims the
first free numbered slot under a base directory (``<base>/0``, ``<base>/1``, ...) with an exclusive
``flock`` that the operating system releases when the process dies; a restarted worker gets slot 0 back and
finds its datasets already loaded.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from types import TracebackType

import anyio

from modelbus.config import ClickHouseSettings
from modelbus.runtime.clickhouse.engine import ClickHouse

__all__ = ("DataDirClaim", "claim_data_dir", "open_engine")


class DataDirClaim:
    """A claimed data directory; the claim lasts until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DataDirClaim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def claim_data_dir(base: Path, *, slots: int = 64) -> DataDirClaim:
    """Claim the first free slot ``base/<n>``; raise ``RuntimeError`` when all ``slots`` are taken."""
    base.mkdir(parents=True, exist_ok=True)
    for slot in range(slots):
        fd = os.open(base / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        path = base / str(slot)
        path.mkdir(exist_ok=True)
        return DataDirClaim(path, fd)
    raise RuntimeError(f"all {slots} ClickHouse data directories under {base} are in use")


async def open_engine(
    stack: AsyncExitStack, settings: ClickHouseSettings, *, base: Path
) -> tuple[ClickHouse, Path | None]:
    """Open the engine ``settings`` name (in a worker thread); embedded, on a directory claimed under
    ``base``, returned with it. The engine is closed, and the claim released, when ``stack`` closes."""
    data_dir: Path | None = None
    if settings.embedded:
        claim = claim_data_dir(base)
        stack.callback(claim.release)
        data_dir = claim.path
    engine = await anyio.to_thread.run_sync(partial(ClickHouse.open, settings, data_dir=data_dir))
    stack.callback(engine.close)
    return engine, data_dir
