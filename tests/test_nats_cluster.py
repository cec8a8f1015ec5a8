"""modelbus on a real three-node NATS cluster (loopback): URL lists, and replicas the operator chose stay.

modelbus creates its streams and KV bucket with one replica. docs/scaling.md tells the operator to give them
three, by creating them first or with ``nats stream edit``; these tests prove a modelbus process that starts
afterwards keeps that count instead of setting it back to one, or failing to open the bucket.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from modelbus.config import ChatSettings, NatsSettings, NsqlSettings
from modelbus.runtime.embedded_nats import nats_server_binary
from modelbus.runtime.jetstream import (
    ensure_consumer,
    ensure_events_stream,
    ensure_work_queue,
    model_views,
    work_queue_consumer,
)
from modelbus.runtime.nats_client import connected
from modelbus.schemas.chat import CHAT
from modelbus.schemas.nsql import NSQL
from modelbus.schemas.subjects import CHAT_STREAM, EVENTS_STREAM, NSQL_STREAM

KV_STREAM = "KV_modelbus_models"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """Three nats-server processes with JetStream, routed to each other: the docs' three-node layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ports = _free_ports(6)
        self.client_ports, self.route_ports = ports[:3], ports[3:]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url_list(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def start(self) -> None:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        for i in range(3):
            conf = self.root / f"n{i}.conf"
            conf.write_text(
                f"server_name: n{i}\n"
                f"listen: 127.0.0.1:{self.client_ports[i]}\n"
                f"jetstream {{ store_dir: {self.root / f'data{i}'} }}\n"
                f"cluster {{ name: modelbus, listen: 127.0.0.1:{self.route_ports[i]}, routes: [{routes}] }}\n"
            )
            log = (self.root / f"n{i}.log").open("ab")
            self.procs.append(
                subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log)
            )
            log.close()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.stop()


async def _eventually(action: Callable[[], Coroutine[Any, Any, Any]], seconds: float = 30) -> Any:
    """Retry while the cluster elects leaders and places new replicas (a few seconds after a change)."""
    with anyio.fail_after(seconds):
        while True:
            try:
                return await action()
            except (nats.js.errors.Error, nats.errors.Error):
                await anyio.sleep(0.25)


async def _replicas(js: JetStreamContext, stream: str, consumer: str | None = None) -> int:
    info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
    assert info.cluster is not None
    return 1 + len(info.cluster.replicas or [])


async def _ensure_all(js: JetStreamContext) -> None:
    """What modelbus's processes do at start: every stream, both consumers, the KV bucket."""
    await ensure_work_queue(js, CHAT, ChatSettings(queue_depth=7))
    await ensure_consumer(js, CHAT_STREAM, work_queue_consumer(CHAT, "qwen2.5-coder", ChatSettings()))
    await ensure_work_queue(js, NSQL, NsqlSettings(queue_depth=9))
    await ensure_consumer(js, NSQL_STREAM, work_queue_consumer(NSQL, "", NsqlSettings()))
    await ensure_events_stream(js)
    await model_views(js)


async def test_precreated_three_replica_streams_keep_three_and_get_our_settings(cluster: Cluster) -> None:
    settings = NatsSettings(url=cluster.url_list)
    async with connected(settings, cluster.url_list, name="operator") as nc:
        js = nc.jetstream()
        await _eventually(js.account_info)
        # what `nats stream add ... --replicas 3` and `nats kv add --replicas 3` leave behind: bare streams
        for name, subject, retention in [
            (CHAT_STREAM, "modelbus.v1.chat.*", RetentionPolicy.WORK_QUEUE),
            (NSQL_STREAM, "modelbus.v1.nsql", RetentionPolicy.WORK_QUEUE),
            (EVENTS_STREAM, "modelbus.v1.events.>", RetentionPolicy.LIMITS),
        ]:
            config = StreamConfig(
                name=name, subjects=[subject], retention=retention, storage=StorageType.FILE, num_replicas=3
            )
            await _eventually(partial(js.add_stream, config))
        await _eventually(lambda: js.create_key_value(bucket="modelbus_models", history=1, replicas=3))

        await _eventually(lambda: _ensure_all(js))

        for stream in (CHAT_STREAM, NSQL_STREAM, EVENTS_STREAM, KV_STREAM):
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream
        # modelbus's own settings were applied on top (the bound of each queue)
        assert (await js.stream_info(CHAT_STREAM)).config.max_msgs_per_subject == 7
        assert (await js.stream_info(NSQL_STREAM)).config.max_msgs_per_subject == 9
        # the durable consumers inherit the stream's replicas, so a queue survives losing a server
        assert await _replicas(js, CHAT_STREAM, "chat-qwen2_2E5-coder") == 3
        assert await _replicas(js, NSQL_STREAM, "nsql") == 3
        kv = await model_views(js)
        await _eventually(lambda: kv.put("qwen2_2E5-coder", b"{}"))


async def test_a_later_start_does_not_undo_nats_stream_edit(cluster: Cluster) -> None:
    async with connected(NatsSettings(url=cluster.url_list), cluster.url_list, name="operator") as nc:
        js = nc.jetstream()
        await _eventually(js.account_info)
        await _eventually(lambda: _ensure_all(js))
        assert (await js.stream_info(CHAT_STREAM)).config.num_replicas == 1  # what modelbus makes by default

        # the operator: `nats stream edit <stream> --replicas 3` (the KV bucket is stream KV_modelbus_models)
        for stream in (CHAT_STREAM, NSQL_STREAM, EVENTS_STREAM, KV_STREAM):
            config = (await js.stream_info(stream)).config
            await _eventually(partial(js.update_stream, config.evolve(num_replicas=3)))

        # another modelbus process starts: it must neither scale the streams back nor fail on the bucket
        await _eventually(lambda: _ensure_all(js))
        for stream in (CHAT_STREAM, NSQL_STREAM, EVENTS_STREAM, KV_STREAM):
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream


async def test_a_comma_separated_url_list_survives_losing_the_connected_server(cluster: Cluster) -> None:
    async with connected(NatsSettings(url=cluster.url_list), cluster.url_list, name="client") as nc:
        js = nc.jetstream()
        await _eventually(js.account_info)
        config = StreamConfig(name="R3", subjects=["r3.>"], storage=StorageType.FILE, num_replicas=3)
        await _eventually(lambda: js.add_stream(config))
        await _eventually(lambda: js.publish("r3.a", b"before"))
        assert nc.connected_url is not None
        port = nc.connected_url.port
        assert port is not None
        victim = cluster.procs[cluster.client_ports.index(port)]
        victim.kill()
        victim.wait()
        await _eventually(lambda: js.publish("r3.a", b"after"))
        assert nc.connected_url is not None and nc.connected_url.port != port
        assert (await _eventually(lambda: js.stream_info("R3"))).state.messages == 2
