"""What fetching into the per-user caches shares: the bootstrap's voice, a lock, ``pip download``.

Everything modelbus fetches comes through pip (its index, proxy and cache configuration apply), is checked
against a pinned sha256 by the caller, and is written under a lock, since every clone shares the cache.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ("FetchError", "Progress", "locked", "pip_download", "say")

Progress = Callable[[str], None]


class FetchError(Exception):
    """Something could not be fetched, or what was fetched is not the pinned thing."""


def say(message: str) -> None:
    """The bootstrap's voice: one ``[modelbus]`` line on stderr."""
    sys.stderr.write(f"[modelbus] {message}\n")
    sys.stderr.flush()


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One writer at a time per cache directory, across processes (clones share the cache)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pip_download(requirement: str, dest: Path, pip_args: Sequence[str] = (), *, source: bool = False) -> Path:
    """``pip download`` one distribution (a wheel, or with ``source`` the sdist) into ``dest``; its path."""
    kind = "--no-binary=:all:" if source else "--only-binary=:all:"
    pattern = "*.tar.gz" if source else "*.whl"
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", kind]
    argv += ["--progress-bar", "off", "-d", str(dest), *pip_args, requirement]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = sorted(dest.glob(pattern))
    if done.returncode != 0 or len(found) != 1:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise FetchError(f"pip download {requirement} failed (exit {done.returncode}):\n{tail}")
    return found[0]
