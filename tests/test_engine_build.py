"""Building llama-server: flags per CPU, the cache key, the pinned source's hash, and the local config checks.

The build itself runs for real on a tiny CMake project packed as an sdist and served by a local pip index:
the same pip download, hash check, unpack, cmake configure and build, and cache as for llama.cpp, in seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from modelbus.config import ConfigError, parse_config
from modelbus.workers.model.engine.build import (
    FLAVORS,
    SOURCE,
    EngineSource,
    build,
    build_key,
    default_flavor,
    find_llama_server,
    installed_path,
)
from modelbus.workers.model.fetching import FetchError
from modelbus.workers.model.providers.local import llama_server_args

AVX512 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi", "avx512_bf16"})
CMAKE_PROJECT = """cmake_minimum_required(VERSION 3.16)
project(tiny C)
add_executable(llama-server main.c)
add_executable(other other.c)
set_target_properties(llama-server PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
"""
MAIN_C = '#include <stdio.h>\nint main(void) { puts("tiny llama-server"); return 0; }\n'
# an in-tree build backend that needs nothing installed: pip download only asks it for the metadata
PYPROJECT = '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
BACKEND = """import os
METADATA = "Metadata-Version: 2.1\\nName: mb-tiny-engine\\nVersion: 1.0\\n"
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(directory, config_settings=None):
    os.makedirs(os.path.join(directory, "mb_tiny_engine-1.0.dist-info"))
    with open(os.path.join(directory, "mb_tiny_engine-1.0.dist-info", "METADATA"), "w") as f:
        f.write(METADATA)
    return "mb_tiny_engine-1.0.dist-info"
"""


def test_the_flavor_follows_the_cpu_unless_chosen() -> None:
    assert default_flavor({}, AVX512) == "avx512"
    assert default_flavor({}, AVX512 - {"avx512_bf16"}) == "portable"
    assert default_flavor({}, frozenset({"avx2", "fma", "f16c"})) == "portable"
    assert default_flavor({}, frozenset()) == "portable"
    assert default_flavor({"MODELBUS_LLAMA_FLAVOR": "portable"}, AVX512) == "portable"
    cache = {"MODELBUS_ENGINE_CACHE": "/c"}
    chosen = installed_path({**cache, "MODELBUS_LLAMA_FLAVOR": "avx512"})
    assert chosen == installed_path(cache, "avx512")
    assert installed_path({**cache, "MODELBUS_LLAMA_FLAVOR": "portable"}) != chosen


def test_the_cache_key_changes_with_the_source_and_the_flags() -> None:
    keys = {build_key(flavor) for flavor in FLAVORS}
    assert len(keys) == len(FLAVORS)
    other = EngineSource(SOURCE.requirement, "0" * 64, SOURCE.tree)
    assert build_key("portable", other) != build_key("portable")
    assert build_key("portable").startswith(f"llama-server-{SOURCE.version}-portable-")
    with pytest.raises(ValueError, match="unknown build flavor"):
        build_key("native")


def test_an_explicit_binary_wins_and_a_missing_one_is_none(tmp_path: Path) -> None:
    binary = tmp_path / "my-llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    cache = {"MODELBUS_ENGINE_CACHE": str(tmp_path / "cache")}
    assert find_llama_server({**cache, "MODELBUS_LLAMA_SERVER": str(binary)}) == binary
    assert find_llama_server({**cache, "MODELBUS_LLAMA_SERVER": str(tmp_path / "nope")}) is None
    binary.chmod(0o644)  # not executable
    assert find_llama_server({**cache, "MODELBUS_LLAMA_SERVER": str(binary)}) is None
    assert find_llama_server(cache) is None
    assert installed_path(cache).parent.parent == tmp_path / "cache"


def _sdist(index: Path) -> tuple[str, str]:
    """A tiny sdist whose ``vendor/tiny`` is a CMake project building ``llama-server``; (name, sha256)."""
    index.mkdir()
    path = index / "mb_tiny_engine-1.0.tar.gz"
    files = {
        "pyproject.toml": PYPROJECT,
        "backend.py": BACKEND,
        "PKG-INFO": "Metadata-Version: 2.1\nName: mb-tiny-engine\nVersion: 1.0\n",
        "vendor/tiny/CMakeLists.txt": CMAKE_PROJECT,
        "vendor/tiny/main.c": MAIN_C,
        "vendor/tiny/other.c": "int main(void) { return 1; }\n",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"mb_tiny_engine-1.0/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return "mb-tiny-engine==1.0", hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_build_fetches_checks_builds_only_the_server_and_is_cached(tmp_path: Path) -> None:
    requirement, sha256 = _sdist(tmp_path / "index")
    source = EngineSource(requirement, sha256, "vendor/tiny")
    environ = {"MODELBUS_ENGINE_CACHE": str(tmp_path / "cache")}
    pip_args = ["--no-index", "--find-links", str(tmp_path / "index")]
    lines: list[str] = []
    binary = build(
        environ, flavor="portable", source=source, progress=lines.append, pip_args=pip_args, jobs=1
    )
    assert binary == installed_path(environ, "portable", source)
    ran = subprocess.run([str(binary)], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "tiny llama-server"
    stamp = json.loads((binary.parent / "build.json").read_text())
    assert stamp["source"] == requirement and stamp["sha256"] == sha256 and stamp["flavor"] == "portable"
    assert "-DGGML_NATIVE=OFF" in stamp["flags"]
    assert sorted(p.name for p in binary.parent.iterdir()) == ["build.json", "llama-server"]  # not `other`
    assert any("100%" in line for line in lines)
    # cached: no index is needed any more, and nothing else is left in the cache
    (tmp_path / "index" / "mb_tiny_engine-1.0.tar.gz").unlink()
    assert (
        build(environ, flavor="portable", source=source, progress=lines.append, pip_args=pip_args) == binary
    )
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [binary.parent.name]


def test_a_source_with_the_wrong_hash_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    requirement, _ = _sdist(tmp_path / "index")
    source = EngineSource(requirement, "0" * 64, "vendor/tiny")
    environ = {"MODELBUS_ENGINE_CACHE": str(tmp_path / "cache")}
    pip_args = ["--no-index", "--find-links", str(tmp_path / "index")]
    with pytest.raises(FetchError, match="expected sha256 0000"):
        build(environ, flavor="portable", source=source, progress=lambda _: None, pip_args=pip_args)
    assert list((tmp_path / "cache").iterdir()) == []


def _local(params: str) -> str:
    return f"models:\n  - name: m\n    from: local:qwen2.5-coder-0.5b-instruct\n    params: {{{params}}}\n"


def test_local_params_are_checked_and_become_llama_server_flags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"params\.capacity.*set `parallel: 2`"):
        parse_config(_local("capacity: 2"), {})
    with pytest.raises(ConfigError, match=r"`--parallel` is set by modelbus.*params\.parallel"):
        parse_config(_local("llama_server_args: [--parallel, '8']"), {})
    with pytest.raises(ConfigError, match=r"`--host` is set by modelbus.*remove it"):
        parse_config(_local("llama_server_args: ['--host=0.0.0.0']"), {})
    config = parse_config(_local("parallel: 3, n_ctx: 1000, llama_server_args: [--cache-ram, '64']"), {})
    args = llama_server_args(config.models[0], tmp_path / "m.gguf", threads=2)
    assert args[args.index("--parallel") + 1] == "3"
    assert args[args.index("--ctx-size") + 1] == "3000"  # shared by the slots: n_ctx each
    assert args[args.index("--threads") + 1] == "2"
    assert args[args.index("--alias") + 1] == "m"
    assert args[-2:] == ["--cache-ram", "64"]  # the user's flags come last, so they win
