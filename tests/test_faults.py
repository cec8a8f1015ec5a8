"""Fault injection: processes killed or stopped, the bus going away, a hanging upstream; nothing is lost.

Every fault that is a process dying is done to a real ``modelbus`` process; nats-server is the real one of
the ``nats_server`` fixture. Timeouts here only guard against hangs: no assertion depends on timing.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from modelbus.config import parse_config
from modelbus.ingress.server import IngressServer
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.views import ModelView
from tests.support.processes import ServiceProcess, modelbus_argv, service
from tests.support.stack import FAST_RUNTIME, running_stack
from tests.support.upstream import Behaviour, UpstreamServer

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
MODEL = "gpt-4.1"


def _config_text(models: dict[str, tuple[str, int]], *, runtime: str = FAST_RUNTIME) -> str:
    """A configuration serving ``{name: (stand-in endpoint, capacity)}``."""
    text = runtime + "models:\n"
    for name, (endpoint, capacity) in models.items():
        text += (
            f"  - name: {name}\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{endpoint}', api_key: sk-test, capacity: {capacity}, "
            "recheck_initial: 0.05, recheck_max: 0.2}\n"
        )
    return text


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "modelbus.yaml"
    path.write_text(text)
    return str(path)


def _worker_argv(config_path: str, nats_url: str) -> list[str]:
    return modelbus_argv("worker", "model", "--config", config_path, "--nats-url", nats_url)


async def _wait_view(
    ingress: IngressServer, model: str, *, workers: int, status: ModelStatus = ModelStatus.READY
) -> ModelView:
    """Until the ingress's copy of the registry's view has ``workers`` workers and ``status``."""
    with anyio.fail_after(20):
        while True:
            view = ingress.views.get(model)
            if view is not None and len(view.workers) == workers and view.status is status:
                return view
            await anyio.sleep(0.05)


async def _wait_listed(http: httpx.AsyncClient, model: str, status: str) -> None:
    with anyio.fail_after(20):
        while True:
            response = await http.get("/v1/models", params={"status": "true"})
            if response.status_code == 200:
                entry = next((m for m in response.json()["data"] if m["id"] == model), None)
                if entry is not None and entry["status"] == status:
                    return
            await anyio.sleep(0.05)


async def _wait_exit(process: ServiceProcess) -> int:
    with anyio.fail_after(20):
        while process.proc.poll() is None:
            await anyio.sleep(0.05)
    return process.proc.returncode


async def test_kill_9_of_one_of_two_workers_under_load_fails_no_request(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config_text = _config_text({MODEL: (upstream.url, 4)})
        argv = _worker_argv(_write(tmp_path, config_text), nats_server.url)
        with (
            service(argv, tmp_path / "worker-a.log") as worker_a,
            service(argv, tmp_path / "worker-b.log") as worker_b,
        ):
            async with running_stack(nats_server.url, parse_config(config_text, {}), workers=0) as stack:
                await _wait_view(stack.ingress, MODEL, workers=2)
                upstream.upstream.behaviour = Behaviour(delay_s=0.3)
                client = stack.client()
                ok, failed = 0, []
                stop = anyio.Event()

                async def steady_client() -> None:
                    nonlocal ok
                    while not stop.is_set():
                        try:
                            reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
                        except openai.APIError as exc:
                            failed.append(exc)
                        else:
                            assert reply.choices[0].message.content == "Hello from the stand-in."
                            ok += 1

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        for _ in range(8):
                            tg.start_soon(steady_client)
                        await anyio.sleep(1.0)
                        # slow the next requests down until 8 are open upstream at once: then each worker
                        # holds exactly its capacity (4), so A certainly dies with 4 requests in flight
                        upstream.upstream.behaviour = Behaviour(delay_s=1.5)
                        first_slow = len(upstream.upstream.requests)
                        while sum(not s.ended for s in upstream.upstream.requests[first_slow:]) < 8:
                            await anyio.sleep(0.01)
                        upstream.upstream.behaviour = Behaviour(delay_s=0.3)
                        ok_at_kill = ok
                        worker_a.kill()
                        await anyio.sleep(3.0)
                        stop.set()
                assert failed == []
                assert ok > ok_at_kill  # served on after the kill
                killed_mid_request = [s for s in upstream.upstream.requests if s.disconnected]
                assert len(killed_mid_request) == 4  # A's requests, each answered by B instead
                view = await _wait_view(stack.ingress, MODEL, workers=1)  # the dead worker left the view
                assert worker_b.proc.poll() is None
                assert view.workers[0].status is ModelStatus.READY


async def test_a_nats_outage_fails_requests_fast_and_everything_comes_back(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config_text = _config_text({MODEL: (upstream.url, 4)})
        argv = _worker_argv(_write(tmp_path, config_text), nats_server.url)
        with service(argv, tmp_path / "worker.log") as worker:
            async with running_stack(nats_server.url, parse_config(config_text, {}), workers=0) as stack:
                await _wait_view(stack.ingress, MODEL, workers=1)
                client = stack.client()
                await client.chat.completions.create(model=MODEL, messages=MESSAGES)
                body = {"model": MODEL, "messages": MESSAGES}
                async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                    await nats_server.stop()
                    with anyio.fail_after(10):
                        while stack.ingress.views.nats_connected:  # the ingress has seen the server go
                            await anyio.sleep(0.02)
                    with anyio.fail_after(5):  # fast: no hang until a deadline
                        refused = await http.post("/v1/chat/completions", json=body)
                    assert refused.status_code == 503
                    assert refused.json()["error"]["code"] == "bus_unavailable"
                    assert refused.headers["retry-after"] == "1"
                    assert (await http.get("/v1/ready")).status_code == 503
                    assert (await http.get("/health")).status_code == 200  # the process itself is fine
                    await anyio.sleep(2.0)
                    await nats_server.start()
                    with anyio.fail_after(20):
                        while (await http.get("/v1/ready")).status_code != 200:
                            await anyio.sleep(0.05)
                    await stack.wait_ready(timeout=20)
                    with anyio.fail_after(20):  # every request succeeds again
                        for _ in range(5):
                            reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
                            assert reply.choices[0].message.content == "Hello from the stand-in."
                assert worker.proc.poll() is None  # no process exited
                assert "nats.reconnected" in worker.log_text()


async def test_a_killed_registry_leaves_the_last_view_and_a_new_one_converges(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config_text = _config_text({MODEL: (upstream.url, 4)})
        config_path = _write(tmp_path, config_text)
        config = parse_config(config_text, {})
        registry_argv = modelbus_argv("registry", "--config", config_path, "--nats-url", nats_server.url)
        with (
            service(registry_argv, tmp_path / "registry-1.log") as registry,
            service(_worker_argv(config_path, nats_server.url), tmp_path / "worker.log") as worker,
        ):
            async with (
                connected(config.runtime.nats, nats_server.url, name="ingress") as nc,
                IngressServer(config, nc, port=0) as ingress,
                httpx.AsyncClient(base_url=ingress.url, timeout=10) as http,
            ):
                await _wait_view(ingress, MODEL, workers=1)
                before = (await http.get("/v1/models", params={"status": "true"})).json()
                registry.kill()
                for _ in range(10):  # several TTLs without a registry: the last view is still served
                    await anyio.sleep(0.2)
                    listing = await http.get("/v1/models", params={"status": "true"})
                    assert listing.status_code == 200
                    assert listing.json() == before
                reply = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
                assert reply.status_code == 200  # and chat does not need the registry
                with service(registry_argv, tmp_path / "registry-2.log") as new_registry:
                    with anyio.fail_after(20):
                        while '"registry.started"' not in new_registry.log_text():
                            await anyio.sleep(0.05)
                    # a status change after the restart is reflected: the upstream starts refusing the key
                    upstream.upstream.behaviour = Behaviour(fail_status=401)
                    refused = await http.post(
                        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}
                    )
                    assert refused.status_code == 401
                    await _wait_listed(http, MODEL, "error")
                    upstream.upstream.behaviour = Behaviour()
                    await _wait_listed(http, MODEL, "ready")  # and back, once the worker's recheck passes
                    assert new_registry.proc.poll() is None
                assert worker.proc.poll() is None


async def test_a_hanging_upstream_times_out_releases_the_slot_and_spares_other_models(
    nats_server: EmbeddedNats,
) -> None:
    async with UpstreamServer() as hanging, UpstreamServer() as healthy:
        runtime = FAST_RUNTIME.replace("request_timeout: 30", "request_timeout: 1")
        config = parse_config(
            _config_text({"model-a": (hanging.url, 1), "model-b": (healthy.url, 1)}, runtime=runtime), {}
        )
        async with running_stack(nats_server.url, config) as stack:
            await _wait_view(stack.ingress, "model-a", workers=1)
            await _wait_view(stack.ingress, "model-b", workers=1)
            hanging.upstream.behaviour = Behaviour(delay_s=60)
            before = len(hanging.upstream.requests)
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                results: dict[str, httpx.Response] = {}

                async def call(model: str) -> None:
                    body = {"model": model, "messages": MESSAGES}
                    results[model] = await http.post("/v1/chat/completions", json=body)

                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call, "model-a")
                        while len(hanging.upstream.requests) == before:  # A is stuck upstream
                            await anyio.sleep(0.01)
                        await call("model-b")  # meanwhile B answers
                        assert "model-a" not in results
                assert results["model-b"].status_code == 200
                assert results["model-a"].status_code == 504
                stuck = hanging.upstream.requests[before]
                with anyio.fail_after(5):  # the worker gave up on the upstream call too
                    while not stuck.disconnected:
                        await anyio.sleep(0.02)
                hanging.upstream.behaviour = Behaviour()
                with anyio.fail_after(10):  # A's one slot is free again
                    await call("model-a")
                assert results["model-a"].status_code == 200


async def test_sigterm_to_a_busy_worker_finishes_its_requests_and_exits_0(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        runtime = FAST_RUNTIME.replace("shutdown_grace: 3", "shutdown_grace: 5")
        config_text = _config_text({MODEL: (upstream.url, 2)}, runtime=runtime)
        argv = _worker_argv(_write(tmp_path, config_text), nats_server.url)
        with service(argv, tmp_path / "worker.log") as worker:
            async with running_stack(nats_server.url, parse_config(config_text, {}), workers=0) as stack:
                await _wait_view(stack.ingress, MODEL, workers=1)
                upstream.upstream.behaviour = Behaviour(delay_s=1.5)
                client = stack.client()
                before = len(upstream.upstream.requests)
                replies: list[str | None] = []

                async def call() -> None:
                    reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
                    replies.append(reply.choices[0].message.content)

                with anyio.fail_after(20):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call)
                        tg.start_soon(call)
                        while len(upstream.upstream.requests) < before + 2:  # both in flight upstream
                            await anyio.sleep(0.01)
                        worker.proc.send_signal(signal.SIGTERM)
                    assert await _wait_exit(worker) == 0
                assert replies == ["Hello from the stand-in."] * 2
                lines = [json.loads(line) for line in worker.log_text().splitlines() if line.startswith("{")]
                answered = [line for line in lines if line["event"] == "chat.request"]
                assert [line["outcome"] for line in answered[-2:]] == ["ok", "ok"]
                drained = next(line for line in lines if line["event"] == "model_worker.drained")
                assert drained["timed_out"] is False
