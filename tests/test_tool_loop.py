"""``params.tools``: the model worker's tool loop over the bus, with an NSQL worker on the real ClickHouse.

The model is the stand-in upstream (told which tool to call and with what), so every turn is known; what
the tools answer comes from ClickHouse. The local model's own tool use is in test_local_model_chat.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from modelbus.config import Config, parse_config
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.nsql_fixtures import admin_rows, nsql_engine
from tests.support.stack import FAST_RUNTIME, nsql_stack
from tests.support.upstream import Behaviour, UpstreamServer
from tests.test_history import rows_when

__all__ = ("nsql_engine",)

COUNT_SQL = "SELECT count() AS orders FROM sales_data WHERE region = 'Europe'"


def _config(endpoint: str, *, tools: str = "auto", limit: int = 10) -> Config:
    return parse_config(
        FAST_RUNTIME
        + "  nsql: {request_timeout: 60}\n"
        + "models:\n  - name: analyst\n    from: openai:gpt-4.1\n    datasets: [sales_data]\n"
        + f"    params: {{endpoint: '{endpoint}', openai_api_key: sk-test, tools: '{tools}', "
        + f"tool_recursion_limit: {limit}, recheck_initial: 0.05}}\n"
        + "  - name: plain\n    from: openai:gpt-4.1\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05}}\n"
        + "datasets:\n  - name: sales_data\n    from: sample:sales_data\n"
        + "  - name: secret_data\n    from: sample:products\n",
        {},
    )


def _europe_orders(engine: ClickHouse) -> int:
    [(count,)] = admin_rows(engine, "SELECT count() FROM modelbus.sales_data WHERE region = 'Europe'")
    return int(count)


def _tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m.get("role") == "tool"]


async def test_the_model_answers_from_rows_its_sql_tool_read(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config = _config(upstream.url)
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
            upstream.upstream.behaviour = Behaviour(
                tool_name="sql", tool_arguments=json.dumps({"query": COUNT_SQL}), echo_tool_result=True
            )
            client = stack.client()
            done = await client.chat.completions.create(
                model="analyst", messages=[{"role": "user", "content": "How many orders came from Europe?"}]
            )
            answer = json.loads(done.choices[0].message.content or "")
            assert answer["rows"] == [{"orders": _europe_orders(nsql_engine)}]
            assert done.choices[0].finish_reason == "stop"
            first, second = (seen.body for seen in upstream.upstream.requests[-2:])
            # the first turn was offered every runtime tool; the second got the call and its result
            offered = {t["function"]["name"] for t in first["tools"]}
            assert offered == {"list_datasets", "table_schema", "sample_data", "sql", "nsql"}
            assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "sql"
            assert json.loads(_tool_messages(second)[0]["content"])["row_count"] == 1
            assert done.usage is not None  # both turns' tokens
            assert done.usage.prompt_tokens > len(first["messages"][0]["content"].split())


async def test_tools_read_only_the_models_datasets_through_the_guard(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config = _config(upstream.url)
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
            client = stack.client()
            ask = [{"role": "user", "content": "go"}]
            cases = {
                "list_datasets": ("{}", lambda r: [d["name"] for d in r] == ["sales_data"]),
                "table_schema": (
                    '{"tables": ["sales_data"]}',
                    lambda r: "region" in {c["name"] for c in r[0]["columns"]},
                ),
                "sample_data": ('{"dataset": "sales_data", "limit": 2}', lambda r: r["row_count"] == 2),
                # a dataset that exists but is not the model's, a write, and arguments that do not fit
                "sql": ('{"query": "SELECT * FROM secret_data"}', lambda r: "secret_data" in r["error"]),
            }
            for tool, (arguments, expected) in cases.items():
                upstream.upstream.behaviour = Behaviour(
                    tool_name=tool, tool_arguments=arguments, echo_tool_result=True
                )
                done = await client.chat.completions.create(model="analyst", messages=ask)  # type: ignore[arg-type]
                assert expected(json.loads(done.choices[0].message.content or "")), (tool, done)
            for arguments in ('{"query": "DROP TABLE sales_data"}', '{"sql": 1}', "not json"):
                upstream.upstream.behaviour = Behaviour(
                    tool_name="sql", tool_arguments=arguments, echo_tool_result=True
                )
                done = await client.chat.completions.create(model="analyst", messages=ask)  # type: ignore[arg-type]
                assert "error" in json.loads(done.choices[0].message.content or ""), arguments
            assert admin_rows(nsql_engine, "SELECT count() FROM modelbus.sales_data")[0][0] > 0


async def test_the_loop_stops_at_the_recursion_limit_and_the_last_turn_has_no_runtime_tools(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config = _config(upstream.url, tools="list_datasets, sql", limit=2)
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
            upstream.upstream.behaviour = Behaviour(
                tool_name="list_datasets", tool_arguments="{}", tool_turns=99
            )
            before = len(upstream.upstream.requests)
            done = await stack.client().chat.completions.create(
                model="analyst", messages=[{"role": "user", "content": "loop"}]
            )
            turns = [seen.body for seen in upstream.upstream.requests[before:]]
            assert len(turns) == 3  # two turns that called tools, then one offered none
            assert [len(_tool_messages(t)) for t in turns] == [0, 1, 2]
            assert {t["function"]["name"] for t in turns[0]["tools"]} == {"list_datasets", "sql"}
            assert "tools" not in turns[-1]
            assert done.choices[0].message.content == Behaviour().reply


async def test_client_tools_reach_the_client_and_tool_choice_none_turns_runtime_tools_off(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    async with UpstreamServer() as upstream:
        config = _config(upstream.url)
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
            client = stack.client()
            ask = [{"role": "user", "content": "weather?"}]
            upstream.upstream.behaviour = Behaviour(tool_name="get_weather")
            done = await client.chat.completions.create(model="analyst", messages=ask, tools=[weather])  # type: ignore[arg-type, list-item]
            [call] = done.choices[0].message.tool_calls or []
            assert call.function.name == "get_weather" and done.choices[0].finish_reason == "tool_calls"
            offered = [t["function"]["name"] for t in upstream.upstream.requests[-1].body["tools"]]
            assert offered[0] == "get_weather" and "sql" in offered  # the client's, then the runtime's

            upstream.upstream.behaviour = Behaviour(reply="no tools")
            done = await client.chat.completions.create(model="analyst", messages=ask, tool_choice="none")  # type: ignore[arg-type]
            assert done.choices[0].message.content == "no tools"
            assert "tools" not in upstream.upstream.requests[-1].body

            # a model without tools passes the client's through untouched
            upstream.upstream.behaviour = Behaviour()
            done = await client.chat.completions.create(model="plain", messages=ask, tools=[weather])  # type: ignore[arg-type, list-item]
            assert [t["function"]["name"] for t in upstream.upstream.requests[-1].body["tools"]] == [
                "get_weather"
            ]


async def test_a_stream_shows_tool_progress_when_asked_and_ends_with_the_answer(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config = _config(upstream.url)
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
            upstream.upstream.behaviour = Behaviour(
                tool_name="sql", tool_arguments=json.dumps({"query": COUNT_SQL}), reply="About Europe."
            )
            ask = {"model": "analyst", "messages": [{"role": "user", "content": "Europe?"}], "stream": True}
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                for progress in (True, False):
                    headers = {"x-spiceai-completion-progress": "enabled"} if progress else {}
                    response = await http.post("/v1/chat/completions", json=ask, headers=headers)
                    assert response.status_code == 200
                    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
                    assert lines[-1] == "[DONE]"
                    chunks = [msgspec.json.decode(line) for line in lines[:-1]]
                    notes = [c for c in chunks if c["id"] == ""]
                    assert bool(notes) is progress
                    if progress:  # Spice's: a JSON line before the call and one after it
                        events = [n["choices"][0]["delta"]["content"] for n in notes]
                        assert all(e.startswith("!---jsonl") for e in events) and len(events) == 2
                        before, after = (json.loads(e.removeprefix("!---jsonl")) for e in events)
                        assert (before["title"], json.loads(before["content"])) == (
                            "Calling 'sql' tool",
                            {"query": COUNT_SQL},
                        )
                        assert after["title"] == "'sql' tool completed successfully"
                        assert after["id"] == before["id"] != ""
                    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["id"])
                    assert text == "About Europe."

            # the official SDK reads the same stream
            stream = await stack.client().chat.completions.create(
                model="analyst", messages=[{"role": "user", "content": "Europe?"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "About Europe."


async def test_without_an_nsql_worker_the_model_is_told_the_tools_cannot_run(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        config = _config(upstream.url)
        async with nsql_stack(nats_server.url, config, None, tmp_path) as stack:
            upstream.upstream.behaviour = Behaviour(
                tool_name="sql", tool_arguments=json.dumps({"query": COUNT_SQL}), echo_tool_result=True
            )
            done = await stack.client().chat.completions.create(
                model="analyst", messages=[{"role": "user", "content": "Europe?"}]
            )
            assert "no NSQL worker" in json.loads(done.choices[0].message.content or "")["error"]


@pytest.mark.parametrize("status", [400, 500])
async def test_a_failing_upstream_during_the_loop_is_the_clients_error(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path, status: int
) -> None:
    async with UpstreamServer() as upstream:
        config = _config(upstream.url)
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
            upstream.upstream.behaviour = Behaviour(fail_status=status)
            with pytest.raises(openai.APIStatusError) as failed:
                await stack.client().chat.completions.create(
                    model="analyst", messages=[{"role": "user", "content": "Europe?"}]
                )
            assert failed.value.status_code == (400 if status == 400 else 502)


async def test_every_tool_call_is_a_child_span_in_the_task_history(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    table = f"history_{uuid.uuid4().hex[:10]}"
    async with UpstreamServer() as upstream:
        config = parse_config(
            FAST_RUNTIME
            + f"  history: {{table: {table}, flush_interval: 0.1}}\n  nsql: {{request_timeout: 60}}\n"
            + "models:\n  - name: analyst\n    from: openai:gpt-4.1\n    datasets: [sales_data]\n"
            + f"    params: {{endpoint: '{upstream.url}', api_key: sk-test, tools: auto}}\n"
            + "datasets:\n  - name: sales_data\n    from: sample:sales_data\n"
            + f"  - name: task_history\n    from: history:{table}\n",
            {},
        )
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path, keep_history=True) as stack:
            upstream.upstream.behaviour = Behaviour(
                tool_name="sql", tool_arguments=json.dumps({"query": COUNT_SQL}), tool_turns=2
            )
            await stack.client().chat.completions.create(
                model="analyst", messages=[{"role": "user", "content": "Europe?"}]
            )
            [completion] = await rows_when(nsql_engine, table, "task = 'ai_completion'", 1)
            tools = await rows_when(nsql_engine, table, "task = 'tool_use::sql'", 2)
            for tool in tools:  # two calls, each its own span under the completion's, each with its rows
                assert tool["parent_span_id"] == completion["span_id"]
                assert (tool["trace_id"], tool["outcome"]) == (completion["trace_id"], "ok")
                assert tool["labels"]["rows"] == "1"
                assert json.loads(tool["input"]) == {"query": COUNT_SQL}
            assert len({t["span_id"] for t in tools}) == 2
            # the NSQL worker's run of each call is the tool span's child
            runs = await rows_when(nsql_engine, table, "task = 'tool_call'", 2)
            assert {r["parent_span_id"] for r in runs} == {t["span_id"] for t in tools}
