"""The system as operators run it: `modelbus up`, and services as separate processes on one bus."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import anyio
import httpx
import msgspec
import nats.errors
import openai
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from modelbus.config import ConfigError, NatsSettings, parse_config
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.jetstream import ensure_events_stream, model_views
from modelbus.runtime.nats_client import connected
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.subjects import encode_token, event_subject
from modelbus.schemas.views import ModelStatusEvent, ModelView
from tests.support.processes import ServiceProcess, modelbus_argv, service, wait_http_ok
from tests.support.stack import FAST_RUNTIME
from tests.support.upstream import Behaviour, UpstreamServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _status(http: httpx.AsyncClient, model: str) -> dict[str, object]:
    listing = (await http.get("/v1/models", params={"status": "true"})).json()
    return next(m for m in listing["data"] if m["id"] == model)


async def _wait_status(
    http: httpx.AsyncClient, model: str, status: str, timeout: float = 60
) -> dict[str, object]:
    with anyio.fail_after(timeout):
        while True:
            response = await http.get("/v1/models", params={"status": "true"})
            if response.status_code == 200:
                entry = next((m for m in response.json()["data"] if m["id"] == model), None)
                if entry is not None and entry["status"] == status:
                    return entry
            await anyio.sleep(0.1)


@pytest.mark.slow
async def test_up_serves_the_local_model_and_an_upstream_then_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    async with UpstreamServer() as upstream:
        upstream.upstream.behaviour = Behaviour(fail_status=401)
        config = tmp_path / "modelbus.yaml"
        config.write_text(
            FAST_RUNTIME + f"  http: {{port: {port}}}\n  state_dir: state\n"
            "models:\n"
            "  - name: qwen2.5-coder\n    from: local:qwen2.5-coder-0.5b-instruct\n"
            f"  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test, recheck_initial: 0.1, "
            "recheck_max: 0.3}\n"
        )
        with service(modelbus_argv("up", "--config", str(config)), tmp_path / "up.log") as up:
            await wait_http_ok(f"http://127.0.0.1:{port}/health")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                failed = await _wait_status(http, "gpt-4.1", "error")
                assert failed["error"] == {"category": "model", "type": "auth", "code": "model.auth"}
                upstream.upstream.behaviour = Behaviour()
                await _wait_status(http, "gpt-4.1", "ready")  # recovered on its own
                ready = await _wait_status(http, "qwen2.5-coder", "ready", timeout=120)
                assert ready["owned_by"] == "local:qwen2.5-coder-0.5b-instruct"
                client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
                assert {m.id for m in (await client.models.list()).data} == {"qwen2.5-coder", "gpt-4.1"}
                reply = await client.chat.completions.create(
                    model="qwen2.5-coder", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
                )
                assert reply.choices[0].message.content
                await client.close()
            url_file = tmp_path / "state" / "nats.url"
            nats_port = int(url_file.read_text().strip().rsplit(":", 1)[1])
            up.proc.send_signal(signal.SIGTERM)
            assert up.proc.wait(60) == 0
        assert not url_file.exists()
        with socket.socket() as s:  # the embedded nats-server is gone with it
            assert s.connect_ex(("127.0.0.1", nats_port)) != 0
        assert "serving the API on" in up.log_text()


async def _first_answer_after_serving(up: ServiceProcess, port: int) -> dict[str, object]:
    """The one model in the first ``/v1/models?status=true`` listing once ``up`` has said it serves."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        with anyio.fail_after(60):
            while "serving the API on" not in up.log_text():
                await anyio.sleep(0.05)
            while (response := await http.get("/v1/models", params={"status": "true"})).status_code != 200:
                assert response.json()["error"]["message"] == "App not initialized", response.text
                await anyio.sleep(0.05)
    [entry] = response.json()["data"]
    assert isinstance(entry, dict)
    return entry


async def test_up_after_a_clean_stop_first_shows_the_new_worker_not_the_last_runs_goodbye(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    """``up``, stop, ``up``: the bucket holds what the last run's worker left when it said goodbye. The first
    listing after "serving" shows the new worker (``loading``), and the view went there straight from the
    goodbye: no stale view in between."""
    port = _free_port()
    async with UpstreamServer() as upstream:
        # the readiness probe hangs, so the worker stays `loading`; a warm-up of 37.5 s: only a view written
        # on the new worker's first heartbeat can show it sooner
        upstream.upstream.behaviour = Behaviour(delay_s=600)
        config = tmp_path / "modelbus.yaml"
        config.write_text(
            "runtime:\n  heartbeat: {interval: 30}\n  shutdown_grace: 3\n  nats: {drain_timeout: 2}\n"
            f"  http: {{port: {port}}}\n  history: {{enabled: false}}\n"
            "models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test, check_timeout: 600}}\n"
        )
        argv = modelbus_argv("up", "--config", str(config), "--nats-url", nats_server.url)
        kv = await model_views(nc.jetstream())
        with service(argv, tmp_path / "up-1.log") as up:
            assert (await _first_answer_after_serving(up, port))["status"] == "loading"
            up.proc.send_signal(signal.SIGTERM)
            assert up.proc.wait(60) == 0
        entry = await kv.get(encode_token("gpt-4.1"))
        gone = msgspec.json.decode(entry.value or b"", type=ModelView)
        assert gone.error is not None and gone.error.code == "worker.not_found"
        assert gone.error_message == "the last worker serving this model shut down"

        events: list[ModelStatusEvent] = []

        async def collect(msg: Msg) -> None:
            events.append(msgspec.json.decode(msg.data, type=ModelStatusEvent))

        await ensure_events_stream(nc.jetstream())
        await nc.jetstream().subscribe(
            event_subject("gpt-4.1"), cb=collect, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        with service(argv, tmp_path / "up-2.log") as up:
            first = await _first_answer_after_serving(up, port)
            assert (first["status"], first["error"]) == ("loading", None), first
            now = await kv.get(encode_token("gpt-4.1"))
            with anyio.fail_after(30):
                while not events:
                    await anyio.sleep(0.05)
            up.proc.send_signal(signal.SIGTERM)
            assert up.proc.wait(60) == 0
    view = msgspec.json.decode(now.value or b"", type=ModelView)
    assert [w.status for w in view.workers] == [ModelStatus.LOADING]
    assert now.revision == (entry.revision or 0) + 1  # the very next write after the goodbye's
    assert (events[0].previous, events[0].status, events[0].revision) == (
        ModelStatus.ERROR,
        ModelStatus.LOADING,
        now.revision,
    )


async def test_services_as_processes_a_killed_worker_turns_error_within_the_ttl(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    port = _free_port()
    async with UpstreamServer() as upstream:
        config = tmp_path / "modelbus.yaml"
        config.write_text(
            FAST_RUNTIME + f"  http: {{port: {port}}}\n"
            f"models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test}}\n"
        )
        common = ("--config", str(config), "--nats-url", nats_server.url)
        with (
            service(modelbus_argv("registry", *common), tmp_path / "registry.log"),
            service(modelbus_argv("ingress", *common), tmp_path / "ingress.log") as ingress,
            service(modelbus_argv("worker", "model", *common), tmp_path / "worker.log") as worker,
        ):
            await wait_http_ok(f"http://127.0.0.1:{port}/health")
            async with connected(NatsSettings(), nats_server.url, name="probe") as nc:
                for service_name in ("modelbus-registry", "modelbus-ingress", "modelbus-model-worker"):
                    with anyio.fail_after(30):  # each process registers once it has started
                        while True:
                            try:
                                reply = await nc.request(f"$SRV.INFO.{service_name}", b"", timeout=2)
                                break
                            except nats.errors.NoRespondersError:
                                await anyio.sleep(0.1)
                    assert json.loads(reply.data)["name"] == service_name  # every process is discoverable
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                await _wait_status(http, "gpt-4.1", "ready")
                worker.kill()
                failed = await _wait_status(http, "gpt-4.1", "error", timeout=10)
                assert failed["error"] == {"category": "worker", "type": "timeout", "code": "worker.timeout"}
            assert ingress.terminate() == 0


def test_a_bad_config_fails_at_start_with_file_key_and_fix(tmp_path: Path) -> None:
    config = tmp_path / "modelbus.yaml"
    config.write_text("runtime:\n  http: {prot: 8090}\n")
    result = subprocess.run(
        modelbus_argv("up", "--config", str(config)), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert str(config) in result.stderr and "runtime.http.prot" in result.stderr and "port" in result.stderr


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("runtime:\n  nsql: {model: nope}\n", "runtime.nsql.model"),
        ("runtime:\n  clickhouse: {url: 'clickhouse.example:9000'}\n", "runtime.clickhouse.url"),
        ("models:\n  - {name: a, from: 'openai:x', datasets: [missing]}\n", "models[0].datasets"),
    ],
)
def test_config_mistakes_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {}, source="m.yaml")
    assert caught.value.key == key
    assert caught.value.fix
