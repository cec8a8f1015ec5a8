"""``modelbus probe <kind>``: the container health check for services without HTTP, on a real nats-server."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client
from nats.micro import add_service

from modelbus.cli.probe import ping, worker_host
from modelbus.config import HeartbeatSettings, NatsSettings
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.worker import WorkerRuntime, new_worker_id
from modelbus.schemas.heartbeat import ModelInfo
from modelbus.workers.model.state import ModelState


@pytest.mark.parametrize(
    ("worker_id", "host"),
    [
        ("model-host1-4242-a1b2c3", "host1"),
        ("nsql-my-box-2-17-d4e5f6", "my-box-2"),  # a hostname may contain dashes and digits
        ("model-ip-10-0-0-1.ec2.internal-9-abcdef", "ip-10-0-0-1.ec2.internal"),
        ("registry", None),
        ("model-host1-notapid-a1b2c3", None),
    ],
)
def test_worker_host(worker_id: str, host: str | None) -> None:
    assert worker_host(worker_id) == host


def test_a_new_worker_id_names_this_host() -> None:
    assert worker_host(new_worker_id("model")) == socket.gethostname()


def _worker(nc: Client, kind: str, worker_id: str | None = None) -> WorkerRuntime:
    state = ModelState("qwen2.5-coder", ModelInfo(owned_by="local:x"), capacity=1)
    models = [state] if kind == "model" else []
    return WorkerRuntime(
        nc, kind=kind, models=models, heartbeat=HeartbeatSettings(interval=30), worker_id=worker_id
    )


async def test_ping_finds_a_running_service_and_only_on_this_host_when_asked(
    nc: Client, nats_server: EmbeddedNats
) -> None:
    settings, url, here = NatsSettings(), nats_server.url, socket.gethostname()
    assert not await ping(settings, url, "model-worker")  # nobody yet

    async with _worker(nc, "model", worker_id="model-elsewhere-1-abcdef"):
        assert await ping(settings, url, "model-worker")
        assert not await ping(settings, url, "model-worker", host=here)  # the only worker is elsewhere
        async with _worker(nc, "model"):
            assert await ping(settings, url, "model-worker", host=here)
        assert not await ping(settings, url, "nsql-worker")  # another kind does not count

    async with _worker(nc, "nsql"):
        assert await ping(settings, url, "nsql-worker", host=here)

    service = await add_service(nc, name="modelbus-registry", version="0.1.0")
    assert await ping(settings, url, "registry")
    await service.stop()
    assert not await ping(settings, url, "registry")


async def test_an_unreachable_server_fails_within_the_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with anyio.fail_after(5):
        assert not await ping(NatsSettings(), f"nats://127.0.0.1:{port}", "registry", timeout=1)


async def test_the_command_exit_codes(nc: Client, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    config = tmp_path / "modelbus.yaml"
    config.write_text("runtime: {nats: {url: embedded}}\n")

    async def probe(*args: str) -> int:
        argv = [sys.executable, "-m", "modelbus.cli.main", "probe", *args, "--config", str(config)]
        done = await anyio.run_process([*argv, "--nats-url", nats_server.url], check=False)
        return done.returncode

    async with _worker(nc, "model"):
        assert await probe("model-worker", "--this-host") == 0
        assert await probe("nsql-worker") == 1
        assert await probe("Not_A_Kind") == 2
    # `embedded` and no `modelbus up` here: refused, as every single service is
    argv = [sys.executable, "-m", "modelbus.cli.main", "probe", "registry", "--config", str(config)]
    assert (await anyio.run_process(argv, check=False)).returncode == 2
