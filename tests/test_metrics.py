"""Metrics under real traffic: the ingress's ``GET /metrics`` and the workers' ``$SRV.STATS``.

A real stack (nats-server, registry, model worker, ingress; NSQL worker and chdb for the NSQL test) serves
requests made with the official ``openai`` SDK; the stand-in upstream answers them and reports usage. Each
test reads the metrics before and after, and checks that they moved by exactly what was asked of the
system. Values are polled until they arrive (a response is recorded when it has ended, which can be just
after the client has read it), never timed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import openai
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from modelbus.config import Config, parse_config
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.nsql_fixtures import nsql_engine
from tests.support.stack import FAST_RUNTIME, nsql_stack, running_stack, srv_stats, stand_in_config
from tests.support.upstream import Behaviour, UpstreamServer

__all__ = ("nsql_engine",)

KEY = "metrics-key-5c1d9e"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "gpt-4.1"
CHAT = "/v1/chat/completions"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _auth_config(endpoint: str, *, model_params: str = "") -> Config:
    return stand_in_config(
        endpoint, extra_runtime=f"  auth: {{api_keys: [{KEY}]}}\n", model_params=model_params
    )


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Poll until ``check`` holds (the bound only stops a broken test from hanging)."""
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


async def wait_ready(client: openai.AsyncOpenAI, model: str = MODEL) -> None:
    async def ready() -> bool:
        try:
            found = await client.models.retrieve(model, extra_query={"status": "true"})
        except openai.APIStatusError:
            return False
        return bool(found.model_extra and found.model_extra.get("status") == "ready")

    await until(ready, timeout=30)


async def model_stats(nc: Client) -> dict[str, Any]:
    return dict((await srv_stats(nc, "modelbus-model-worker"))["models"][MODEL])


async def test_requests_latency_tokens_and_statuses_are_counted(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, _auth_config(upstream.url)) as stack,
        httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http,
    ):
        client = stack.client(api_key=KEY)
        await wait_ready(client)
        before = await scrape(http)
        worker_before = await model_stats(nc)

        prompt = completion = 0
        for i in range(3):
            reply = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"say hi {i} times"}]
            )
            assert reply.usage is not None
            prompt += reply.usage.prompt_tokens
            completion += reply.usage.completion_tokens
        for _ in range(2):
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "count to three please"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt += chunk.usage.prompt_tokens
                    completion += chunk.usage.completion_tokens
        assert prompt > 0 and completion > 0
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL, messages=[])
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("secret-looking-model-id-9f2")
        await client.models.list()  # the ingress's fast lane
        assert (await http.get("/v1/models?status=true", headers=AUTH)).status_code == 200  # Litestar's
        assert (await http.delete(CHAT, headers=AUTH)).status_code == 405
        assert (await http.get("/no/such/path-7d1e", headers=AUTH)).status_code == 404

        ok = {"route": CHAT, "method": "POST", "model": MODEL}

        def delta(after: Samples, name: str, **labels: str) -> float:
            return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

        async def all_recorded() -> bool:
            after = await scrape(http)
            return (
                delta(
                    after,
                    "modelbus_http_requests_total",
                    route="unmatched",
                    method="GET",
                    status="404",
                    model="",
                )
                >= 1
            )

        await until(all_recorded)
        after = await scrape(http)
        assert delta(after, "modelbus_http_requests_total", status="200", **ok) == 5
        assert delta(after, "modelbus_http_request_duration_seconds_count", **ok) == 5
        assert delta(after, "modelbus_http_request_duration_seconds_sum", **ok) > 0
        # the latency buckets span 1 ms to 60 s
        assert value(after, "modelbus_http_request_duration_seconds_bucket", le="0.001", **ok) is not None
        assert value(after, "modelbus_http_request_duration_seconds_bucket", le="60.0", **ok) == value(
            after, "modelbus_http_request_duration_seconds_count", **ok
        )
        first_byte = {"route": CHAT, "model": MODEL}
        assert delta(after, "modelbus_http_stream_first_byte_seconds_count", **first_byte) == 2
        # tokens: exactly the usage the stand-in reported, plain answers and streams
        assert delta(after, "modelbus_tokens_total", model=MODEL, kind="prompt") == prompt
        assert delta(after, "modelbus_tokens_total", model=MODEL, kind="completion") == completion
        # errors: the status is a label; an unknown model is "other", never the name the client made up
        chat_404 = {"route": CHAT, "method": "POST", "status": "404", "model": "other"}
        assert delta(after, "modelbus_http_requests_total", **chat_404) == 1
        # an invalid body is refused before the handler reads the model
        assert (
            delta(after, "modelbus_http_requests_total", route=CHAT, method="POST", status="400", model="")
            == 1
        )
        # the fast lane counts its answers under the route's own name, as Litestar's router does
        listed = {"route": "/v1/models", "method": "GET", "status": "200", "model": ""}
        assert delta(after, "modelbus_http_requests_total", **listed) == 2
        retrieve = {"route": "/v1/models/{model_id}", "method": "GET", "status": "404", "model": ""}
        assert delta(after, "modelbus_http_requests_total", **retrieve) == 1
        # requests that reached no route share one label value, whatever their path
        unmatched = {"route": "unmatched", "model": ""}
        assert delta(after, "modelbus_http_requests_total", method="DELETE", status="405", **unmatched) == 1
        assert delta(after, "modelbus_http_requests_total", method="GET", status="404", **unmatched) == 1
        text = (await http.get("/metrics", headers=AUTH)).text
        assert "no-such-model" not in text and "secret-looking" not in text and "path-7d1e" not in text

        # the model worker counted the same requests and tokens in its $SRV.STATS
        worker = await model_stats(nc)
        assert worker["requests"] - worker_before["requests"] == 5
        assert worker["failures"] == worker_before["failures"]
        assert worker["prompt_tokens"] - worker_before["prompt_tokens"] == prompt
        assert worker["completion_tokens"] - worker_before["completion_tokens"] == completion
        assert worker["busy_seconds"] > worker_before["busy_seconds"]
        assert worker["in_flight"] == 0


async def test_metrics_need_the_api_key(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, _auth_config(upstream.url)) as stack,
        httpx.AsyncClient(base_url=stack.base_url) as http,
    ):
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"}):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
        for headers in (AUTH, {"X-API-Key": KEY}):
            response = await http.get("/metrics", headers=headers)
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = await scrape(http)
        # the refusals were counted, before routing (so under no route), and the key is in no label
        assert (
            value(
                samples,
                "modelbus_http_requests_total",
                route="unmatched",
                method="GET",
                status="401",
                model="",
            )
            == 3
        )
        assert KEY not in (await http.get("/metrics", headers=AUTH)).text
        # /metrics is not part of the API's OpenAPI document
        schema = (await http.get("/schema/openapi.json", headers=AUTH)).json()
        assert "/metrics" not in schema["paths"]


async def test_queue_depth_rises_behind_a_busy_worker_and_falls_back(nats_server: EmbeddedNats) -> None:
    held = Behaviour(delay_s=60)  # every request is held by the upstream until its client goes away
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, _auth_config(upstream.url, model_params="capacity: 1")) as stack,
        httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http,
    ):
        client = stack.client(api_key=KEY)
        await wait_ready(client)
        chat = {"queue": "chat", "model": MODEL}
        idle = await scrape(http)
        assert value(idle, "modelbus_queue_depth", **chat) == 0
        assert value(idle, "modelbus_queue_depth", queue="nsql", model="") == 0  # no NSQL worker: no consumer
        upstream.upstream.behaviour = held

        async def ask() -> None:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "wait"}])

        async def depth_is(depth: int, waiting: int) -> bool:
            samples = await scrape(http)
            got = (
                value(samples, "modelbus_queue_depth", **chat),
                value(samples, "modelbus_queue_waiting", **chat),
            )
            return got == (depth, waiting)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(ask)
            # one request in the worker's one slot (delivered, not acknowledged), two waiting for it
            await until(lambda: depth_is(3, 2))
            asked = [r for r in upstream.upstream.requests if r.body["messages"][0]["content"] == "wait"]
            assert len(asked) == 1  # only the one in the slot reached the upstream
            tg.cancel_scope.cancel()  # the clients leave: the ingress cancels all three
        await until(lambda: depth_is(0, 0))


def _nsql_config(endpoint: str) -> Config:
    return parse_config(
        FAST_RUNTIME
        + f"  auth: {{api_keys: [{KEY}]}}\n  nsql: {{request_timeout: 60, max_attempts: 3, max_deliver: 4}}\n"
        + f"models:\n  - name: {MODEL}\n    from: openai:gpt-4.1\n    datasets: [metrics_sales]\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05}}\n"
        + "datasets:\n  - name: metrics_sales\n    from: sample:sales_data\n    params: {rows: '1000'}\n",
        {},
    )


async def test_nsql_worker_stats_and_nsql_metrics(
    nats_server: EmbeddedNats, nc: Client, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    good = msgspec.json.encode({"sql": "SELECT customer_id FROM metrics_sales ORDER BY customer_id LIMIT 3"})
    bad = msgspec.json.encode({"sql": "SELECT no_such_column FROM metrics_sales"})
    async with (
        UpstreamServer() as upstream,
        nsql_stack(nats_server.url, _nsql_config(upstream.url), nsql_engine, tmp_path) as stack,
        httpx.AsyncClient(base_url=stack.base_url, timeout=60, headers=AUTH) as http,
    ):
        await wait_ready(stack.client(api_key=KEY))
        empty = await srv_stats(nc, "modelbus-nsql-worker")
        assert empty["models"] == {}
        counters = empty["nsql"]
        assert (counters["requests"], counters["capacity"], counters["in_flight"]) == (0, 4, 0)
        assert counters["datasets"] == {"metrics_sales": {"status": "ready", "error_code": None}}

        upstream.upstream.behaviour = Behaviour(reply=good.decode())
        for _ in range(2):
            answer = await http.post("/v1/nsql", json={"query": "the first three customers"})
            assert answer.status_code == 200, answer.text
            assert len(answer.json()) == 3
        upstream.upstream.behaviour = Behaviour(reply=bad.decode())
        failed = await http.post("/v1/nsql", json={"query": "something impossible"})
        assert failed.status_code == 400 and failed.json()["error"]["code"] == "sql_failed", failed.text

        data = await srv_stats(nc, "modelbus-nsql-worker")
        stats = data["nsql"]
        assert (stats["requests"], stats["ok"], stats["failed"]) == (3, 2, {"sql_failed": 1})
        assert stats["sql_attempts"] == 2 + 3  # one each for the answers, max_attempts for the failure
        assert stats["retries"] == 2
        assert stats["model_calls"] == 5
        assert stats["rows"] == 6
        assert stats["in_flight"] == 0 and stats["cancelled"] == 0
        assert stats["busy_seconds"] > 0 and 0 < stats["outside_model_seconds"] <= stats["busy_seconds"]

        # the NSQL worker's SQL came from the model over the chat path: the model worker counted those calls
        model = await model_stats(nc)
        assert model["requests"] == 5

        route = {"route": "/v1/nsql", "method": "POST", "model": MODEL}

        async def recorded() -> bool:
            samples = await scrape(http)
            return value(samples, "modelbus_http_requests_total", status="400", **route) == 1

        await until(recorded)
        samples = await scrape(http)
        assert value(samples, "modelbus_http_requests_total", status="200", **route) == 2
        assert value(samples, "modelbus_http_request_duration_seconds_count", **route) == 3
        # the NSQL queue's consumer exists now, and is empty again
        assert value(samples, "modelbus_queue_depth", queue="nsql", model="") == 0
        consumer = await nc.jetstream().consumer_info("MODELBUS_NSQL", "nsql")
        assert consumer.config.max_deliver == 4  # runtime.nsql.max_deliver
