"""The shared worker runtime: heartbeats on change and on interval, $SRV discovery, goodbye on exit."""

from __future__ import annotations

import json

import anyio
import msgspec
from nats.aio.client import Client

from modelbus.config import HeartbeatSettings
from modelbus.runtime.worker import WorkerRuntime
from modelbus.schemas.heartbeat import Goodbye, Heartbeat, ModelInfo, worker_report_decoder
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.schemas.subjects import HEARTBEAT_WILDCARD, heartbeat_subject
from modelbus.workers.model.state import ModelState


async def test_heartbeats_discovery_and_goodbye(nc: Client) -> None:
    decoder = worker_report_decoder()
    send, receive = anyio.create_memory_object_stream[tuple[str, Heartbeat | Goodbye]](100)

    async def collect(msg: object) -> None:
        await send.send((msg.subject, decoder.decode(msg.data)))  # type: ignore[attr-defined]

    await nc.subscribe(HEARTBEAT_WILDCARD, cb=collect)
    state = ModelState("qwen2.5-coder", ModelInfo(owned_by="local:x"), capacity=2)
    runtime = WorkerRuntime(nc, kind="model", models=[state], heartbeat=HeartbeatSettings(interval=30))
    async with runtime:
        subject, first = await receive.receive()
        assert subject == heartbeat_subject("qwen2.5-coder", runtime.worker_id)
        assert "qwen2.5-coder" not in subject  # the dot was encoded
        assert isinstance(first, Heartbeat)
        assert (first.status, first.capacity, first.model) == (ModelStatus.LOADING, 2, "qwen2.5-coder")

        # a change is published at once, long before the 30 s interval
        state.set_error(ErrorInfo.of(ErrorCategory.MODEL, ErrorType.AUTH), "invalid_api_key")
        with anyio.fail_after(5):
            _, beat = await receive.receive()
        assert isinstance(beat, Heartbeat)
        assert beat.status == ModelStatus.ERROR and beat.error is not None
        assert beat.error.code == "model.auth" and beat.seq > first.seq

        ping = await nc.request("$SRV.PING.modelbus-model-worker", b"", timeout=2)
        assert json.loads(ping.data)["metadata"]["worker_id"] == runtime.worker_id
        stats = json.loads((await nc.request("$SRV.STATS.modelbus-model-worker", b"", timeout=2)).data)
        data = stats["endpoints"][0]["data"]
        assert data["models"]["qwen2.5-coder"]["status"] == "error"
        info = json.loads((await nc.request("$SRV.INFO.modelbus-model-worker", b"", timeout=2)).data)
        reply = await nc.request(info["endpoints"][0]["subject"], b"", timeout=2)
        assert msgspec.json.decode(reply.data)[0]["worker_id"] == runtime.worker_id

    with anyio.fail_after(5):
        _, bye = await receive.receive()
    assert isinstance(bye, Goodbye)
    assert bye.worker_id == runtime.worker_id
