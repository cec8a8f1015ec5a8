"""Status streams for subscribers: ``GET /v1/models/events`` (SSE), the NATS events read by the official
JavaScript client, and the AsyncAPI document that describes them.

Everything runs on a real nats-server; the system tests run a real registry and real model-worker processes
that are killed with SIGKILL. Timeouts only stop a broken test from hanging: no assertion depends on timing.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import jsonschema_rs
import msgspec
import pytest
import uvicorn
from anyio.streams.buffered import BufferedByteReceiveStream
from httpx_sse import ServerSentEvent, aconnect_sse
from litestar import Litestar
from nats.aio.client import Client
from nats.js.kv import KeyValue

from modelbus.config import parse_config
from modelbus.ingress.controllers.events import events_router
from modelbus.ingress.status_stream import StreamSettings
from modelbus.ingress.view_store import ModelViewStore
from modelbus.registry import Registry
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from modelbus.schemas.asyncapi import asyncapi_document
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.schemas.subjects import decode_token, encode_token, event_subject
from modelbus.schemas.views import ModelStatusEvent, ModelView
from tests.ingress_helpers import GPT, QWEN, ingress_config, put_view, running_ingress, views_bucket
from tests.support.processes import ServiceProcess, modelbus_argv, service
from tests.support.stack import FAST_RUNTIME, running_stack
from tests.support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")
MODEL = "gpt-4.1"
KEY = "events-key-3c9d1e7a"
SSE = {"Accept": "text/event-stream"}
WAIT_S = 30.0
_view_decoder = msgspec.json.Decoder(ModelView)
_event_decoder = msgspec.json.Decoder(ModelStatusEvent)


# -- helpers ----------------------------------------------------------------------------------------------


def js_package(*parts: str) -> Path:
    """A file of tests/js's npm packages; the test fails (it is not skipped) if they were never installed."""
    path = JS_DIR.joinpath("node_modules", *parts)
    if not path.exists():
        pytest.fail("tests/js/node_modules is missing: run `./run test` (it runs `npm ci --prefix tests/js`)")
    return path


async def until(check: Callable[[], bool], *, timeout: float = WAIT_S) -> None:
    """Wait for ``check()`` to hold (the bound only stops a broken test from hanging)."""
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


@dataclass
class Stream:
    """What one SSE client received, in order."""

    events: list[ServerSentEvent] = field(default_factory=list)
    status: int = 0
    ended: bool = False
    cut: bool = False  # the connection was closed without the stream's end

    def named(self, name: str) -> list[ServerSentEvent]:
        return [e for e in self.events if e.event == name]

    @property
    def synced(self) -> bool:
        return any(e.event == "snapshot_complete" for e in self.events)

    def snapshot(self) -> dict[str, tuple[ModelView, int]]:
        found = {}
        for event in self.events:
            if event.event == "snapshot_complete":
                return found
            assert event.event == "model", event
            view = _view_decoder.decode(event.data)
            found[view.id] = (view, int(event.id))
        raise AssertionError("no snapshot_complete yet")

    def changes(self) -> list[ModelStatusEvent]:
        return [_event_decoder.decode(e.data) for e in self.named("status")]


async def read_stream(
    http: httpx.AsyncClient,
    into: Stream,
    *,
    url: str = "/v1/models/events",
    headers: dict[str, str] | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Follow ``GET /v1/models/events`` into ``into`` until the server ends it (or the task is cancelled)."""
    try:
        async with aconnect_sse(http, "GET", url, headers={**SSE, **(headers or {})}) as source:
            into.status = source.response.status_code
            task_status.started()
            async for event in source.aiter_sse():
                into.events.append(event)
    except httpx.TransportError:
        into.cut = True
    into.ended = True


def sse_client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None))


@asynccontextmanager
async def serving_events(nc: Client, settings: StreamSettings) -> AsyncIterator[tuple[ModelViewStore, str]]:
    """Only the events routes, on a real uvicorn, with stream ``settings`` a test can shorten."""
    async with ModelViewStore(nc) as views:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        app = Litestar(route_handlers=[events_router(views, settings=settings)], logging_config=None)
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, ws="none")
        server = _Uvicorn(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            await until(lambda: server.started)
            try:
                yield views, f"http://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                server.should_exit = True


class _Uvicorn(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test owns the process's signals
        yield


def view(
    model: str, status: ModelStatus, *, error_type: ErrorType = ErrorType.CONNECTION, **fields: Any
) -> ModelView:
    error = ErrorInfo.of(ErrorCategory.MODEL, error_type) if status is ModelStatus.ERROR else None
    return ModelView(id=model, owned_by="openai:x", status=status, error=error, **fields)


async def put(kv: KeyValue, item: ModelView) -> int:
    return int(await kv.put(encode_token(item.id), msgspec.json.encode(item)))


def _worker_argv(tmp_path: Path, nats_url: str, endpoint: str) -> list[str]:
    path = tmp_path / "modelbus.yaml"
    path.write_text(_config_text(endpoint))
    return modelbus_argv("worker", "model", "--config", str(path), "--nats-url", nats_url)


def _config_text(endpoint: str) -> str:
    return FAST_RUNTIME + (
        f"models:\n  - name: {MODEL}\n    from: openai:gpt-4.1\n"
        f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05, recheck_max: 0.2}}\n"
    )


def _kill(process: ServiceProcess) -> None:
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(10)


# -- the HTTP route ---------------------------------------------------------------------------------------


async def test_a_missing_or_wrong_key_gets_401_and_a_right_key_gets_the_snapshot(nc: Client) -> None:
    kv = await views_bucket(nc)
    await put_view(kv, QWEN)
    await put_view(kv, GPT)
    async with running_ingress(nc, KEY) as ingress:
        http = ingress.http
        for headers in ({}, {"X-API-Key": "events-key-wrong"}, {"Authorization": "Bearer events-key-wrong"}):
            for path in ("/v1/models/events", "/v1/asyncapi.json"):
                response = await http.get(path, headers={**SSE, **headers})
                assert response.status_code == 401, (path, headers, response.text)
                assert response.json()["error"]["code"] == "invalid_api_key"
        await until(lambda: len(ingress.server.views) == 2)

        # without Accept: text/event-stream (curl's */*, a probe): the snapshot once, as JSON
        response = await http.get("/v1/models/events", headers={"X-API-Key": KEY})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert [m["id"] for m in body["data"]] == sorted([QWEN.id, GPT.id])
        assert body["revision"] == ingress.server.views.revision > 0

        stream = Stream()
        async with sse_client(ingress.base_url) as sse, anyio.create_task_group() as tg:
            await tg.start(partial(read_stream, sse, stream, headers={"Authorization": f"Bearer {KEY}"}))
            await until(lambda: stream.synced)
            assert ingress.server.views.listeners == 1
            tg.cancel_scope.cancel()
        assert stream.status == 200
        snapshot = stream.snapshot()
        assert {model: item for model, (item, _) in snapshot.items()} == {QWEN.id: QWEN, GPT.id: GPT}
        ids = [int(e.id) for e in stream.events]
        assert ids == sorted(ids) and len(set(ids[:-1])) == len(ids) - 1  # oldest revision first
        done = json.loads(stream.named("snapshot_complete")[0].data)
        assert done == {"models": 2, "revision": ids[-1]}
        # the client left: its listener (and the task serving it) are gone
        await until(lambda: ingress.server.views.listeners == 0)

        response = await http.get("/v1/asyncapi.json", headers={"X-API-Key": KEY})
        assert response.status_code == 200
        assert response.json() == asyncapi_document()


async def test_changes_follow_the_snapshot_with_no_gap_and_no_duplicate(nc: Client) -> None:
    """Clients connect while three models change status 400 times as fast as the bucket takes it. Each
    client's snapshot plus its live events must tell the same story as every other client's, from its own
    start: per model, revisions only grow, each event's ``previous`` is the status that client last had, none
    repeats what the snapshot already held, and every client ends on the bucket's final revision of every
    model."""
    kv = await views_bucket(nc)
    models = ("m-a", "m.b", "m/c")
    cycle = (ModelStatus.READY, ModelStatus.ERROR, ModelStatus.LOADING)
    written: dict[tuple[str, int], ModelStatus] = {}  # (model, revision) -> status
    final: dict[str, int] = {}
    streams = [Stream() for _ in range(4)]
    reached = [anyio.Event() for _ in streams]  # the writer is at a client's turn to connect
    go = [anyio.Event() for _ in streams]  # that client is connecting: write on, concurrently

    async def writer() -> None:
        for i in range(400):
            if i % 100 == 0 and i // 100 < len(streams):
                reached[i // 100].set()
                await go[i // 100].wait()
            model, status = models[i % 3], cycle[(i // 3) % 3]
            written[model, await put(kv, view(model, status))] = status
        for model in models:  # a last state no earlier one had (its own error code): always a change
            final[model] = await put(kv, view(model, ModelStatus.ERROR, error_type=ErrorType.AUTH))
            written[model, final[model]] = ModelStatus.ERROR

    def caught_up(stream: Stream) -> bool:
        if not final or not stream.synced:
            return False
        last = {m: rev for m, (_, rev) in stream.snapshot().items()}
        last.update({e.model: e.revision for e in stream.changes()})
        return last == final

    async with (
        serving_events(nc, StreamSettings()) as (views, url),
        sse_client(url) as sse,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(writer)
        for stream, turn, started in zip(streams, reached, go, strict=True):
            await turn.wait()
            started.set()
            await tg.start(read_stream, sse, stream)
        await until(lambda: all(caught_up(s) for s in streams))
        assert views.listeners == len(streams)
        tg.cancel_scope.cancel()

    histories = []
    for stream in streams:
        known = {m: (item.status, rev) for m, (item, rev) in stream.snapshot().items()}
        seen: list[tuple[str, int]] = []
        ids = [int(e.id) for e in stream.events]
        assert ids == sorted(ids), ids  # ids (revisions of one bucket) only grow
        for event in stream.changes():
            assert event.model in models
            assert written[event.model, event.revision] is event.status
            if event.model in known:
                status, revision = known[event.model]
                assert event.revision > revision, (event, revision)  # nothing the client already had
                assert event.previous is status, (event, status)  # nothing missed in between
            else:
                assert event.previous is None
            known[event.model] = (event.status, event.revision)
            seen.append((event.model, event.revision))
        histories.append((stream.snapshot(), seen))
    # a later client's live events are exactly the earlier client's from the later snapshot on
    first_seen = histories[0][1]
    for snapshot, seen in histories[1:]:
        floor = {m: rev for m, (_, rev) in snapshot.items()}
        assert seen == [(m, r) for m, r in first_seen if r > floor.get(m, 0)]


async def test_the_stream_survives_a_nats_restart_without_repeats_or_losses(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    """The store re-watches after NATS comes back and compares the replay with what it had: an unchanged view
    is not sent again, and what changed around the restart is."""
    kv = await views_bucket(nc)
    kept = await put(kv, view("kept", ModelStatus.READY))
    await put(kv, view("flips", ModelStatus.READY))
    async with serving_events(nc, StreamSettings()) as (views, url):
        await until(lambda: len(views) == 2)
        stream = Stream()
        async with sse_client(url) as http, anyio.create_task_group() as tg:
            await tg.start(read_stream, http, stream)
            await until(lambda: stream.synced)
            watches = views.watches
            await nats_server.restart()

            async def put_after_restart() -> None:
                with anyio.fail_after(WAIT_S):
                    while True:
                        try:
                            await put(kv, view("flips", ModelStatus.ERROR))
                            await put(kv, view("new", ModelStatus.LOADING))
                            return
                        except Exception:  # not reconnected yet
                            await anyio.sleep(0.05)

            await put_after_restart()
            await until(lambda: {e.model for e in stream.changes()} == {"flips", "new"})
            await until(lambda: views.watches > watches)
            await kv.delete(encode_token("flips"))
            await until(lambda: bool(stream.named("removed")))
            tg.cancel_scope.cancel()
    assert not stream.cut and stream.snapshot()["kept"][1] == kept
    changes = {e.model: e for e in stream.changes()}
    assert len(stream.changes()) == 2  # nothing repeated, "kept" above all
    assert (changes["flips"].previous, changes["flips"].status) == (ModelStatus.READY, ModelStatus.ERROR)
    assert (changes["new"].previous, changes["new"].status) == (None, ModelStatus.LOADING)
    assert [json.loads(e.data)["model"] for e in stream.named("removed")] == ["flips"]


async def test_keepalive_pings_and_a_removed_model(nc: Client) -> None:
    kv = await views_bucket(nc)
    await put(kv, view("kept", ModelStatus.READY))
    await put(kv, view("gone", ModelStatus.READY))
    async with serving_events(nc, StreamSettings(keepalive_s=0.05)) as (views, url):
        await until(lambda: len(views) == 2)
        async with sse_client(url) as http, http.stream("GET", "/v1/models/events", headers=SSE) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            lines = response.aiter_lines()
            seen: list[str] = []
            with anyio.fail_after(WAIT_S):
                while seen.count(": ping") < 2:  # nothing happens: comments keep the connection open
                    seen.append(await anext(lines))
                assert "event: snapshot_complete" in seen
                await kv.delete(encode_token("gone"))
                while not seen[-1].startswith('data: {"model"'):
                    seen.append(await anext(lines))
            assert seen[-3:-1] == ["event: removed", f"id: {seen[-2][4:]}"]
            removed = json.loads(seen[-1][len("data: ") :])
            assert removed["model"] == "gone" and removed["revision"] == int(seen[-2][4:])
        await until(lambda: views.listeners == 0)


async def test_a_client_that_does_not_read_is_cut_off_and_released(nc: Client) -> None:
    """A client that stops reading: once its socket buffers are full its listener's small buffer fills, the
    server gives up on it (no memory grows for it) and closes the connection."""
    kv = await views_bucket(nc)
    await put(kv, view("fat", ModelStatus.READY))
    settings = StreamSettings(buffer=2, keepalive_s=60, final_timeout_s=0.5)
    async with serving_events(nc, settings) as (views, url):
        await until(lambda: len(views) == 1)
        host, port = url.removeprefix("http://").split(":")
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
        )  # a small window: the server blocks sooner
        await anyio.to_thread.run_sync(client.connect, (host, int(port)))
        try:
            client.sendall(b"GET /v1/models/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            await until(lambda: views.listeners == 1)
            # fat status changes (a 256 KiB error message each) until the server drops the client
            message = "x" * 256 * 1024
            puts = 0
            with anyio.fail_after(WAIT_S):
                while views.listeners:
                    status = ModelStatus.ERROR if puts % 2 == 0 else ModelStatus.READY
                    await put(kv, view("fat", status, error_message=message if puts % 2 == 0 else None))
                    puts += 1
                    assert puts < 400, "the slow client was never cut off"
                    await anyio.sleep(0.01)
            # the connection ends: what was already in the socket buffers, then EOF (no more events)
            received = await anyio.to_thread.run_sync(_read_to_eof, client)
            assert received.startswith(b"HTTP/1.1 200")
            assert received.count(b"event: status") < puts
        finally:
            client.close()


def _read_to_eof(client: socket.socket) -> bytes:
    client.settimeout(WAIT_S)
    chunks = []
    while chunk := client.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_closing_the_listeners_ends_each_stream_with_an_error_event(nc: Client) -> None:
    kv = await views_bucket(nc)
    await put(kv, view("one", ModelStatus.READY))
    async with serving_events(nc, StreamSettings()) as (views, url):
        await until(lambda: len(views) == 1)
        stream = Stream()
        async with sse_client(url) as http, anyio.create_task_group() as tg:
            await tg.start(read_stream, http, stream)
            await until(lambda: stream.synced)
            views.close_listeners()
            await until(lambda: stream.ended)
        assert stream.events[-1].event == "error"
        assert json.loads(stream.events[-1].data)["error"]["code"] == "shutting_down"
        await until(lambda: views.listeners == 0)


async def test_stopping_the_ingress_ends_open_streams_within_the_grace(nc: Client) -> None:
    await put_view(await views_bucket(nc), QWEN)
    grace = ingress_config().runtime.shutdown_grace
    stream = Stream()
    async with sse_client("http://unused") as http, anyio.create_task_group() as tg:
        async with running_ingress(nc) as ingress:
            views = ingress.server.views
            await until(lambda: len(views) == 1)
            await tg.start(partial(read_stream, http, stream, url=f"{ingress.base_url}/v1/models/events"))
            await until(lambda: stream.synced)
            started = anyio.current_time()
        stopped = anyio.current_time() - started
        await until(lambda: stream.ended, timeout=5)
    assert views.listeners == 0
    assert stopped < grace + 3  # a bound, not a measurement: the open stream did not hold the ingress up


# -- the real system: a worker dies, a new one starts ------------------------------------------------------


async def test_the_stream_reports_a_killed_worker_and_a_new_one(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        argv = _worker_argv(tmp_path, nats_server.url, upstream.url)
        config = parse_config(_config_text(upstream.url), {})
        with service(argv, tmp_path / "worker-1.log") as first:
            async with running_stack(nats_server.url, config, workers=0) as stack:
                await stack.wait_ready()
                stream = Stream()
                async with sse_client(stack.base_url) as http, anyio.create_task_group() as tg:
                    await tg.start(read_stream, http, stream)
                    await until(lambda: stream.synced)
                    ready, revision = stream.snapshot()[MODEL]
                    assert ready.status is ModelStatus.READY and len(ready.workers) == 1

                    _kill(first)  # SIGKILL: no goodbye; the registry notices the silence
                    await until(lambda: any(e.status is ModelStatus.ERROR for e in stream.changes()))
                    lost = stream.changes()[0]
                    assert (lost.model, lost.previous, lost.status) == (
                        MODEL,
                        ModelStatus.READY,
                        ModelStatus.ERROR,
                    )
                    assert lost.error is not None and lost.error.code == "worker.timeout"
                    assert (lost.workers, lost.revision > revision) == (0, True)

                    with service(argv, tmp_path / "worker-2.log"):
                        await until(lambda: stream.changes()[-1].status is ModelStatus.READY)
                        back = stream.changes()[-1]
                        assert back.previous in (
                            ModelStatus.ERROR,
                            ModelStatus.LOADING,
                        )  # a new worker may load first
                        assert (back.ready_workers, back.error) == (1, None)
                        assert back.revision > lost.revision
                    tg.cancel_scope.cancel()
                assert [e.event for e in stream.events].count("error") == 0


# -- the official NATS JavaScript client --------------------------------------------------------------------


async def _printed(out: BufferedByteReceiveStream, status: str) -> dict[str, Any]:
    """The next line the JS subscriber printed for an event to ``status``; the lines before it are skipped."""
    with anyio.fail_after(WAIT_S):
        while True:
            printed: dict[str, Any] = json.loads(await out.receive_until(b"\n", 1 << 20))
            if printed["data"]["status"] == status:
                return printed


@pytest.mark.skipif(NODE is None, reason="node is not on PATH: this test runs the official nats JS client")
async def test_the_official_nats_js_client_sees_a_killed_worker(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The JS client subscribes before anything runs, so it sees the model turn ready itself; only then is
    the worker killed, and the next error it sees is the registry noticing the silence."""
    assert NODE is not None
    js_package("nats", "package.json")
    async with (
        UpstreamServer() as upstream,
        await anyio.open_process([NODE, str(JS_DIR / "subscribe_status.mjs"), nats_server.url]) as node,
    ):
        try:
            assert node.stdout is not None and node.stderr is not None
            out = BufferedByteReceiveStream(node.stdout)
            err = BufferedByteReceiveStream(node.stderr)
            with anyio.fail_after(WAIT_S):
                line = await err.receive_until(b"\n", 4096)
            assert line == b"subscribed modelbus.v1.events.model.>", line
            config = parse_config(_config_text(upstream.url), {})
            argv = _worker_argv(tmp_path, nats_server.url, upstream.url)
            with service(argv, tmp_path / "worker.log") as worker:
                async with (
                    connected(config.runtime.nats, nats_server.url, name="registry") as nc,
                    Registry(nc, config),
                ):
                    ready = await _printed(out, "ready")
                    _kill(worker)
                    printed = await _printed(out, "error")
        finally:
            if node.returncode is None:
                node.send_signal(signal.SIGTERM)
                with anyio.fail_after(10):
                    assert await node.wait() == 0
    assert printed["subject"] == ready["subject"] == event_subject(MODEL)
    assert decode_token(printed["subject"].rsplit(".", 1)[1]) == MODEL
    event = msgspec.convert(printed["data"], ModelStatusEvent)  # the JS side read our wire Struct
    assert printed["data"]["type"] == "modelbus.v1.model_status"
    assert (event.model, event.previous, event.status) == (MODEL, ModelStatus.READY, ModelStatus.ERROR)
    assert event.error is not None and event.error.code == "worker.timeout"
    assert event.revision > ready["data"]["revision"]


# -- the AsyncAPI document -----------------------------------------------------------------------------------


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    committed = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    assert committed == asyncapi_document(), (
        "docs/asyncapi.json is stale: .venv/bin/python -m modelbus.schemas.asyncapi > docs/asyncapi.json"
    )
    printed = subprocess.run(
        [sys.executable, "-m", "modelbus.schemas.asyncapi"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    assert json.loads(printed) == committed


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_asyncapi_document_is_well_formed() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(document["info"])
    for ref in _refs(document):  # every $ref resolves
        _resolve(document, ref)
    schemas = document["components"]["schemas"]
    addresses = {}
    for name, channel in document["channels"].items():
        # every {parameter} of the address is declared, and only those
        assert set(re.findall(r"{(\w+)}", channel["address"])) == set(channel.get("parameters", {})), name
        addresses[name] = channel["address"]
        for message in channel["messages"].values():
            resolved = _resolve(document, message["$ref"])
            payload = resolved["payload"]
            assert payload["$ref"].startswith("#/components/schemas/")
            assert _resolve(document, payload["$ref"]) is schemas[payload["$ref"].rsplit("/", 1)[1]]
    for name, operation in document["operations"].items():
        assert operation["action"] in {"send", "receive"}
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:  # an operation's messages are its channel's
            assert message["$ref"].startswith(channel + "/messages/"), name
    assert addresses["modelStatus"] == "modelbus.v1.events.model.{model}"
    assert event_subject("qwen2.5-coder") == addresses["modelStatus"].format(model="qwen2_2E5-coder")
    assert addresses["heartbeats"] == "modelbus.v1.heartbeat.{model}.{worker}"
    assert addresses["taskEvents"] == "modelbus.v1.tasks.{component}"
    # the payload schemas are msgspec's, so a real message validates field for field
    status = schemas["ModelStatusEvent"]
    assert set(status["required"]) == {"type", "model", "status", "previous"}
    assert status["properties"]["type"] == {"enum": ["modelbus.v1.model_status"]}
    assert {"ModelView", "Heartbeat", "Goodbye", "TaskEvent", "ErrorInfo", "WorkerView"} <= set(schemas)


@pytest.mark.skipif(
    NODE is None, reason="node is not on PATH: the official AsyncAPI schemas come with tests/js"
)
def test_the_asyncapi_document_validates_against_the_official_asyncapi_3_schema() -> None:
    schema = json.loads(js_package("@asyncapi", "specs", "schemas", "3.0.0-without-$id.json").read_text())
    validator = jsonschema_rs.validator_for(schema)
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(asyncapi_document())]
    assert not errors, "\n".join(errors)
    broken = asyncapi_document()
    broken["operations"]["sendHeartbeat"]["action"] = "publish"  # AsyncAPI 2's word: the validator bites
    assert not validator.is_valid(broken)
