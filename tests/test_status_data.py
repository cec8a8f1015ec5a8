"""The status page's data endpoints beside ``/metrics``: queues, worker loads and recent work, on a real
system (registry, model worker on the stand-in, NSQL worker keeping the task history, ingress)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from modelbus.config import parse_config
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.ingress_helpers import eventually
from tests.support.nsql_fixtures import nsql_engine
from tests.support.stack import FAST_RUNTIME, nsql_stack, running_stack
from tests.support.upstream import Behaviour, UpstreamServer

__all__ = ("nsql_engine",)

MODEL = "gpt-4.1"


def _config(endpoint: str, *, history: str) -> Any:
    return parse_config(
        FAST_RUNTIME
        + f"  history: {history}\n"
        + f"models:\n  - name: {MODEL}\n    from: openai:gpt-4.1\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05, capacity: 3}}\n",
        {},
    )


async def _chat(http: httpx.AsyncClient, trace: str) -> int:
    response = await http.post(
        "/v1/chat/completions",
        headers={"traceparent": f"00-{trace}-{'2' * 16}-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    return response.status_code


async def test_recent_work_and_per_minute_load_come_from_the_task_history(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    table = f"history_{uuid.uuid4().hex[:10]}"
    async with UpstreamServer() as upstream:
        config = _config(upstream.url, history=f"{{enabled: true, table: {table}, flush_interval: 0.2}}")
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path, keep_history=True) as stack:
            ok_trace, failed_trace = uuid.uuid4().hex, uuid.uuid4().hex
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                upstream.upstream.behaviour = Behaviour(reply="one two three four five")  # 5 tokens
                assert await _chat(http, ok_trace) == 200
                upstream.upstream.behaviour = Behaviour(fail_status=500)
                assert await _chat(http, failed_trace) == 502

                async def both_listed() -> dict[str, Any] | None:
                    body: dict[str, Any] = (await http.get("/metrics/history", params={"limit": 5})).json()
                    traces = {r["trace_id"] for r in body["recent"]}
                    return body if {ok_trace, failed_trace} <= traces else None

                body = await eventually(both_listed)
                assert body["available"] is True
                by_trace = {r["trace_id"]: r for r in body["recent"]}
                ok, failed = by_trace[ok_trace], by_trace[failed_trace]
                assert (ok["task"], ok["model"], ok["outcome"], ok["status_code"]) == (
                    "chat",
                    MODEL,
                    "ok",
                    200,
                )
                assert ok["tokens_out"] == 5 and ok["tokens_in"] > 0
                assert (failed["outcome"], failed["status_code"]) == ("error", 502)
                assert body["recent"][0]["started_at"] >= body["recent"][-1]["started_at"]  # newest first
                [series] = [s for s in body["series"] if s["model"] == MODEL]
                assert sum(b["requests"] for b in series["buckets"]) == 2
                assert sum(b["errors"] for b in series["buckets"]) == 1
                assert sum(b["tokens_out"] for b in series["buckets"]) == 5

                limited = (await http.get("/metrics/history", params={"limit": 1})).json()
                assert len(limited["recent"]) == 1
                for bad in ("0", "201", "many"):
                    refused = await http.get("/metrics/history", params={"limit": bad})
                    assert refused.status_code == 400, bad


async def test_queues_and_worker_loads_name_every_queue_and_worker(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config = _config(upstream.url, history="{enabled: false}")
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
            assert stack.nsql is not None
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                queues = (await http.get("/metrics/queues")).json()
                keys = {(q["queue"], q["model"]) for q in queues["queues"]}
                assert keys == {("chat", MODEL), ("nsql", "")}
                chat = next(q for q in queues["queues"] if q["queue"] == "chat")
                assert (chat["depth"], chat["waiting"]) == (0, 0)
                assert [s[1:] for s in chat["samples"]] == [[0, 0]]  # the first look keeps a sample
                assert queues["interval_s"] > 0 and queues["window_s"] >= queues["interval_s"]

                loads = (await http.get("/metrics/workers")).json()["data"]
                by_id = {w["worker_id"]: w for w in loads}
                model_worker = by_id[stack.workers[0].worker_id]
                assert model_worker["kind"] == "model"
                load = model_worker["models"][MODEL]
                assert (load["status"], load["capacity"], load["in_flight"]) == ("ready", 3, 0)
                nsql_worker = by_id[stack.nsql.worker_id]
                assert nsql_worker["kind"] == "nsql" and nsql_worker["nsql"]["in_flight"] == 0

                off = (await http.get("/metrics/history")).json()
                assert off["available"] is False and "runtime.history.enabled" in off["reason"]


async def test_the_page_is_public_and_locked_down_but_its_data_is_not(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config = parse_config(
            FAST_RUNTIME
            + "  auth: {api_keys: [sk-page-test-key]}\n"
            + f"models:\n  - name: {MODEL}\n    from: openai:gpt-4.1\n"
            + f"    params: {{endpoint: '{upstream.url}', api_key: sk-test}}\n",
            {},
        )
        async with running_stack(nats_server.url, config) as stack:
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                page = await http.get("/")
                assert page.status_code == 200
                assert page.headers["content-type"].startswith("text/html")
                assert "default-src 'self'" in page.headers["content-security-policy"]
                assert "/status/app.js" in page.text and "sk-page-test-key" not in page.text
                for asset, media in (("/status/app.js", "text/javascript"), ("/status/app.css", "text/css")):
                    served = await http.get(asset)
                    assert served.status_code == 200 and served.headers["content-type"].startswith(media)
                for data in ("/metrics/queues", "/metrics/workers", "/metrics/history"):
                    assert (await http.get(data)).status_code == 401, data
                    keyed = await http.get(data, headers={"authorization": "Bearer sk-page-test-key"})
                    assert keyed.status_code == 200, data
                no_history = (
                    await http.get("/metrics/history", headers={"x-api-key": "sk-page-test-key"})
                ).json()
                assert no_history["available"] is False  # no NSQL worker: no one keeps the history
                schema = (
                    await http.get("/schema/openapi.json", headers={"x-api-key": "sk-page-test-key"})
                ).json()
                assert {"/metrics/queues", "/metrics/workers", "/metrics/history"} <= set(schema["paths"])
