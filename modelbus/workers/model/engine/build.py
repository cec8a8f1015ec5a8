"""Build llama.cpp's ``llama-server`` once per user, from source pinned by version and sha256.

The source is the llama-cpp-python sdist on PyPI, which vendors the whole llama.cpp tree (``tools/server``
included). pip fetches it, so pip's own index configuration applies; only a file with the pinned hash is
unpacked. cmake builds the one target, statically linked, into a folder of the per-user engine cache named
by the source version and the build flags, so every clone, the tests and CI share one build. Set
``MODELBUS_LLAMA_SERVER`` to a binary to use that instead. ``main`` is ``modelbus engine build``.

Build flags (chosen by measurement: docs/benchmarks.md): ``avx512`` (AVX-512 F/BW/VL/VNNI/VBMI/BF16, AMX
off) where the CPU has all of those, else ``portable`` (AVX2/FMA/F16C). A ``-march=native`` build turns on
llama.cpp's AMX kernels on CPUs with AMX, and those crashed on batches of more than one token here.
``MODELBUS_LLAMA_FLAVOR`` picks a flavor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from modelbus.config import ConfigError, load_config
from modelbus.workers.model.catalog import sha256_file
from modelbus.workers.model.fetching import FetchError, Progress, locked, pip_download, say

__all__ = (
    "FLAVORS",
    "SOURCE",
    "EngineSource",
    "build",
    "default_flavor",
    "engine_cache_dir",
    "find_llama_server",
    "installed_path",
    "main",
)

BINARY = "llama-server"
ENV_BINARY = "MODELBUS_LLAMA_SERVER"
ENV_FLAVOR = "MODELBUS_LLAMA_FLAVOR"


@dataclass(frozen=True, slots=True)
class EngineSource:
    """The pinned source of the engine: a PyPI sdist, its sha256, and where llama.cpp lies inside it."""

    requirement: str
    sha256: str
    tree: str

    @property
    def version(self) -> str:
        return self.requirement.partition("==")[2]


SOURCE = EngineSource(
    requirement="llama-cpp-python==0.3.36",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    tree="vendor/llama.cpp",
)

# Only the server, statically linked (one self-contained file), no web UI, no HTTPS, no tests or examples.
COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DGGML_NATIVE=OFF",
)
FLAVORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "portable": (),  # GGML_NATIVE=OFF alone: AVX2, FMA, F16C
        "avx512": (
            "-DGGML_AVX512=ON",
            "-DGGML_AVX512_VBMI=ON",
            "-DGGML_AVX512_VNNI=ON",
            "-DGGML_AVX512_BF16=ON",
        ),
    }
)
_AVX512_CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi", "avx512_bf16"})
_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of this CPU (empty where ``/proc/cpuinfo`` is not there)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def default_flavor(environ: Mapping[str, str], flags: frozenset[str] | None = None) -> str:
    """``$MODELBUS_LLAMA_FLAVOR``, else ``avx512`` where the CPU has every extension it uses, else
    ``portable``."""
    if chosen := environ.get(ENV_FLAVOR):
        return chosen
    flags = cpu_flags() if flags is None else flags
    return "avx512" if flags >= _AVX512_CPU_FLAGS else "portable"


def engine_cache_dir(environ: Mapping[str, str]) -> Path:
    """The per-user engine cache: ``$MODELBUS_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/modelbus/engines``,
    else ``~/.cache/modelbus/engines``."""
    if explicit := environ.get("MODELBUS_ENGINE_CACHE"):
        return Path(explicit).expanduser()
    if xdg := environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "modelbus" / "engines"
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache" / "modelbus" / "engines"


def build_flags(flavor: str) -> tuple[str, ...]:
    if flavor not in FLAVORS:
        raise ValueError(f"unknown build flavor {flavor!r}; one of {', '.join(FLAVORS)}")
    return COMMON_FLAGS + FLAVORS[flavor]


def build_key(flavor: str, source: EngineSource = SOURCE) -> str:
    """The cache folder's name: the source version, the flavor, and a hash of source and flags."""
    digest = hashlib.sha256("\n".join((source.sha256, *build_flags(flavor))).encode()).hexdigest()[:12]
    return f"{BINARY}-{source.version}-{flavor}-{digest}"


def installed_path(
    environ: Mapping[str, str], flavor: str | None = None, source: EngineSource = SOURCE
) -> Path:
    """Where the build of ``flavor`` (default: :func:`default_flavor`) lives in the cache, built or not."""
    return engine_cache_dir(environ) / build_key(flavor or default_flavor(environ), source) / BINARY


def find_llama_server(environ: Mapping[str, str]) -> Path | None:
    """The binary to run: ``$MODELBUS_LLAMA_SERVER``, else the cached build; None if neither exists."""
    if explicit := environ.get(ENV_BINARY):
        path = Path(explicit).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    path = installed_path(environ)
    return path if path.is_file() else None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build(
    environ: Mapping[str, str],
    *,
    flavor: str | None = None,
    source: EngineSource = SOURCE,
    progress: Progress = say,
    pip_args: Sequence[str] = (),
    jobs: int | None = None,
) -> Path:
    """The cached binary of ``flavor``, built first if it is not there (one build at a time per cache)."""
    flavor = flavor or default_flavor(environ)
    flags = build_flags(flavor)
    target = installed_path(environ, flavor, source)
    if target.is_file():
        return target
    cache = target.parent.parent
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache):
        if target.is_file():  # another process built it while this one waited
            return target
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as scratch:
            work = Path(scratch)
            tree = _fetch_source(work, source, progress, pip_args)
            started = time.monotonic()
            progress(f"building {BINARY} ({flavor}: {' '.join(FLAVORS[flavor]) or 'AVX2/FMA/F16C'})")
            progress("  a first build takes 5-10 minutes on 2 cores; it is cached for every clone")
            _run(["cmake", "-S", str(tree), "-B", str(work / "build"), *flags], work / "configure.log")
            cores = jobs or usable_cores()
            argv = ["cmake", "--build", str(work / "build"), "--target", BINARY, "-j", str(cores)]
            _run(argv, work / "build.log", progress=progress)
            staged = work / "out"
            staged.mkdir()
            shutil.copy2(work / "build" / "bin" / BINARY, staged / BINARY)
            stamp = {"source": source.requirement, "sha256": source.sha256, "flavor": flavor, "flags": flags}
            (staged / "build.json").write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
            staged.replace(target.parent)
            progress(f"{BINARY} built in {time.monotonic() - started:.0f} s: {target}")
    return target


def _fetch_source(work: Path, source: EngineSource, progress: Progress, pip_args: Sequence[str]) -> Path:
    """Download the pinned sdist, check its hash, and unpack only the llama.cpp tree; the tree's path."""
    progress(f"fetching the llama.cpp source: pip download {source.requirement} (an sdist)")
    sdist = pip_download(source.requirement, work / "sdist", pip_args, source=True)
    actual = sha256_file(sdist)
    if actual != source.sha256:
        raise FetchError(f"refusing {sdist.name}: expected sha256 {source.sha256}, got {actual}")
    with tarfile.open(sdist) as archive:
        top = archive.getmembers()[0].name.split("/", 1)[0]
        prefix = f"{top}/{source.tree}/"
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        archive.extractall(work / "src", members=members, filter="data")
    sdist.unlink()
    return work / "src" / top / source.tree


def _run(argv: list[str], log_path: Path, *, progress: Progress | None = None) -> None:
    """Run a build step with its output in ``log_path``; report cmake's progress every 10 %."""
    shown = -10
    with (
        log_path.open("wb") as log,
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            match = _PERCENT.match(line)
            if progress is not None and match and int(match[1]) >= shown + 10:
                shown = int(match[1]) // 10 * 10
                progress(f"  {shown}%")
        code = process.wait()
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise FetchError(f"`{' '.join(argv[:3])} ...` failed (exit {code}); the end of {log_path}:\n{tail}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelbus engine build",
        description=f"Build llama.cpp's {BINARY} from pinned source into the per-user cache (once).",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="build only if this config has local models (default: build regardless)",
    )
    parser.add_argument(
        "--flavor",
        choices=sorted(FLAVORS),
        default=None,
        help=f"default: ${ENV_FLAVOR}, else this CPU's best",
    )
    return parser


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit per way out
    args = _parser().parse_args(argv)
    if args.config is not None:
        try:
            config = load_config(args.config, os.environ)
        except ConfigError as exc:
            say(str(exc))
            return 2
        if not any(m.provider == "local" for m in config.models):
            say(f"{args.config}: no local models, so no {BINARY} is needed")
            return 0
    if os.environ.get(ENV_BINARY) and args.flavor is None:
        found = find_llama_server(os.environ)
        if found is None:
            say(f"${ENV_BINARY}={os.environ[ENV_BINARY]} is not an executable file")
            return 2
        say(f"{BINARY}: using ${ENV_BINARY}={found}")
        return 0
    if shutil.which("cmake") is None:
        say(f"cmake is needed to build {BINARY} (Debian/Ubuntu: apt-get install cmake g++)")
        return 2
    try:
        path = build(os.environ, flavor=args.flavor)
    except (FetchError, OSError) as exc:
        say(f"building {BINARY} failed: {exc}")
        return 2
    say(f"{BINARY}: {path}")
    return 0
