"""How chat work is dispatched: capacity, failover, cancellation, bounded queues, deadlines, tracing."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import anyio
import httpx
import openai
import pytest

from modelbus.ingress.server import IngressServer
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from tests.support.processes import modelbus_argv, service
from tests.support.stack import FAST_RUNTIME, running_stack, stand_in_config
from tests.support.upstream import Behaviour, UpstreamServer

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


async def test_two_workers_of_capacity_one_run_two_requests_in_parallel(nats_server: EmbeddedNats) -> None:
    async with UpstreamServer() as upstream:
        config = stand_in_config(upstream.url, model_params="capacity: 1")
        async with running_stack(nats_server.url, config, workers=2) as stack:
            await stack.wait_ready()
            upstream.upstream.behaviour = Behaviour(delay_s=0.5)
            client = stack.client()
            for _ in range(3):  # every time, not by luck
                first = len(upstream.upstream.requests)
                async with anyio.create_task_group() as tg:
                    for _ in range(2):
                        tg.start_soon(
                            lambda: client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
                        )
                a, b = upstream.upstream.requests[first:]
                assert max(a.started, b.started) < min(a.ended, b.ended), "the two requests did not overlap"
            # and a worker never holds more than its capacity: a third request waits for a free slot
            upstream.upstream.behaviour = Behaviour(delay_s=0.6)
            first = len(upstream.upstream.requests)
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(lambda: client.chat.completions.create(model="gpt-4.1", messages=MESSAGES))
            seen = sorted(upstream.upstream.requests[first:], key=lambda s: s.started)
            assert seen[2].started >= min(seen[0].ended, seen[1].ended)


async def test_a_full_queue_answers_429_with_retry_after_at_once(nats_server: EmbeddedNats) -> None:
    async with UpstreamServer() as upstream:
        config = stand_in_config(
            upstream.url,
            extra_runtime="  chat: {queue_depth: 2, ack_wait: 1.0, keepalive: 0.25}\n",
            model_params="capacity: 1",
        )
        async with running_stack(nats_server.url, config) as stack:
            await stack.wait_ready()
            upstream.upstream.behaviour = Behaviour(delay_s=2.0)
            async with (
                httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http,
                anyio.create_task_group() as tg,
            ):
                body = {"model": "gpt-4.1", "messages": MESSAGES}
                for _ in range(2):  # one running, one queued: the queue's bound is 2
                    tg.start_soon(partial(http.post, "/v1/chat/completions", json=body))
                with anyio.fail_after(5):
                    while len(upstream.upstream.requests) < 2:  # the readiness check, then the first request
                        await anyio.sleep(0.02)
                await anyio.sleep(0.2)
                refused = await http.post("/v1/chat/completions", json=body)
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "queue_full"
                tg.cancel_scope.cancel()


async def test_a_deadline_gives_504(nats_server: EmbeddedNats) -> None:
    async with UpstreamServer() as upstream:
        config = stand_in_config(upstream.url, extra_runtime="  chat: {request_timeout: 0.5}\n")
        async with running_stack(nats_server.url, config) as stack:
            await stack.wait_ready()
            upstream.upstream.behaviour = Behaviour(delay_s=3.0)
            with pytest.raises(openai.APIStatusError) as caught:
                await stack.client().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
            assert caught.value.status_code == 504


async def test_a_client_disconnect_closes_the_upstream_connection(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        for stream in (True, False):
            upstream.upstream.behaviour = Behaviour(
                reply="a " * 200, chunk_delay_s=0.05, delay_s=0 if stream else 30
            )
            body = {"model": "gpt-4.1", "messages": MESSAGES, "stream": stream}
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                if stream:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        async for _ in response.aiter_bytes():
                            break  # one chunk, then hang up
                else:
                    with anyio.move_on_after(0.5):
                        await http.post("/v1/chat/completions", json=body)
            seen = upstream.upstream.requests[-1]
            with anyio.fail_after(5):
                while not seen.disconnected:
                    await anyio.sleep(0.02)


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_kill_9_before_the_first_chunk_completes_on_another_worker(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config_text = FAST_RUNTIME + (
            f"models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test, capacity: 1}}\n"
        )
        config_path = _write_config(tmp_path / "modelbus.yaml", config_text)
        worker_argv = modelbus_argv(
            "worker", "model", "--config", str(config_path), "--nats-url", nats_server.url
        )
        stack_config = stand_in_config(upstream.url)
        with service(worker_argv, tmp_path / "worker-a.log") as worker_a:
            async with running_stack(nats_server.url, stack_config, workers=0) as stack:
                await stack.wait_ready()
                upstream.upstream.behaviour = Behaviour(delay_s=1.5)
                traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                client = stack.client(default_headers={"traceparent": traceparent})
                result: list[openai.types.chat.ChatCompletion] = []
                async with anyio.create_task_group() as tg:

                    async def call() -> None:
                        result.append(
                            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
                        )

                    tg.start_soon(call)
                    with anyio.fail_after(10):
                        while len(upstream.upstream.requests) < 2:  # worker A took it and is waiting upstream
                            await anyio.sleep(0.02)
                    await anyio.sleep(
                        0.8
                    )  # several keepalive intervals: the ingress must still not bind to A
                    worker_a.kill()
                    upstream.upstream.behaviour = Behaviour()
                    with service(worker_argv, tmp_path / "worker-b.log") as worker_b:
                        with anyio.fail_after(30):
                            while not result:
                                await anyio.sleep(0.05)
                        # the trace is carried across NATS into the worker's request log line (as the
                        # ingress's child span: same trace id, the ingress's span as the parent)
                        with anyio.fail_after(5):
                            while "00-4bf92f3577b34da6a3ce929d0e0e4736-" not in worker_b.log_text():
                                await anyio.sleep(0.05)
                assert result[0].choices[0].message.content == "Hello from the stand-in."


async def test_kill_9_after_the_first_chunk_ends_the_stream_with_an_error_event(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config_text = FAST_RUNTIME + (
            f"models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test, capacity: 1}}\n"
        )
        config_path = _write_config(tmp_path / "modelbus.yaml", config_text)
        worker_argv = modelbus_argv(
            "worker", "model", "--config", str(config_path), "--nats-url", nats_server.url
        )
        with service(worker_argv, tmp_path / "worker.log") as worker:
            async with running_stack(nats_server.url, stand_in_config(upstream.url), workers=0) as stack:
                await stack.wait_ready()
                upstream.upstream.behaviour = Behaviour(reply="word " * 100, chunk_delay_s=0.1)
                stream = await stack.client().chat.completions.create(
                    model="gpt-4.1", messages=MESSAGES, stream=True
                )
                received = 0

                async def consume() -> None:
                    nonlocal received
                    async for _chunk in stream:
                        received += 1
                        if received == 2:
                            worker.kill()

                with anyio.fail_after(20), pytest.raises(openai.APIError) as caught:
                    await consume()
                assert received >= 2
                assert "interrupted" in caught.value.message


async def test_registry_sees_subprocess_worker_goodbye(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """SIGTERM: the worker drains and says goodbye; exit code 0."""
    async with UpstreamServer() as upstream:
        config_text = FAST_RUNTIME + (
            f"models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test}}\n"
        )
        config_path = _write_config(tmp_path / "modelbus.yaml", config_text)
        argv = modelbus_argv("worker", "model", "--config", str(config_path), "--nats-url", nats_server.url)
        with service(argv, tmp_path / "worker.log") as worker:
            async with running_stack(nats_server.url, stand_in_config(upstream.url), workers=0) as stack:
                await stack.wait_ready()
                assert worker.terminate() == 0
                lines = [json.loads(line) for line in worker.log_text().splitlines() if line.startswith("{")]
                assert any(line["event"] == "model_worker.drained" for line in lines)


async def test_a_request_whose_deadline_passed_in_the_queue_is_never_started(
    nats_server: EmbeddedNats,
) -> None:
    async with UpstreamServer() as upstream:
        config = stand_in_config(upstream.url, model_params="capacity: 1")
        impatient = stand_in_config(upstream.url, extra_runtime="  chat: {request_timeout: 0.5}\n")
        async with (
            running_stack(nats_server.url, config) as stack,
            connected(impatient.runtime.nats, nats_server.url, name="impatient") as nc,
            IngressServer(impatient, nc, port=0) as impatient_ingress,
        ):
            await stack.wait_ready()
            upstream.upstream.behaviour = Behaviour(delay_s=1.5)
            before = len(upstream.upstream.requests)
            async with httpx.AsyncClient(timeout=30) as http, anyio.create_task_group() as tg:
                first = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "first"}]}
                tg.start_soon(partial(http.post, f"{stack.base_url}/v1/chat/completions", json=first))
                with anyio.fail_after(5):
                    while len(upstream.upstream.requests) == before:  # the worker's one slot is taken
                        await anyio.sleep(0.01)
                late = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "late"}]}
                response = await http.post(f"{impatient_ingress.url}/v1/chat/completions", json=late)
                assert response.status_code == 504  # its deadline passed while it waited in the queue
            await anyio.sleep(0.3)  # the first is done; the worker has pulled the late one, and dropped it
            contents = [s.body["messages"][0]["content"] for s in upstream.upstream.requests[before:]]
            assert contents == ["first"]
