"""``params.tools``: the model worker's tool loop over the bus, with an NSQL worker on the real ClickHouse.

The model is the stand-in upstream (told which tool to call and with what), so every turn is known; what
the tools answer comes from ClickHouse. The local model's own tool use is in test_local_model_chat.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from modelbus.config import Config, parse_config
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.workers.model.providers.tool_calls import parse_tool_calls
from modelbus.workers.model.tool_loop import sql_written_in
from modelbus.workers.nsql.tools import ToolHandler
from tests.support.nsql_fixtures import admin_rows, nsql_engine
from tests.support.stack import FAST_RUNTIME, Stack, nsql_stack
from tests.support.upstream import Behaviour, Upstream, UpstreamServer
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


@asynccontextmanager
async def _analyst(
    nats_server: EmbeddedNats, engine: ClickHouse | None, tmp_path: Path, **config: Any
) -> AsyncIterator[tuple[Stack, Upstream]]:
    """The ``analyst`` model (tools over sales_data) and ``plain`` (no tools), played by one stand-in."""
    async with (
        UpstreamServer() as server,
        nsql_stack(nats_server.url, _config(server.url, **config), engine, tmp_path) as stack,
    ):
        yield stack, server.upstream


def _europe_orders(engine: ClickHouse) -> int:
    [(count,)] = admin_rows(engine, "SELECT count() FROM modelbus.sales_data WHERE region = 'Europe'")
    return int(count)


def stack_tool_calls(stack: Stack, tool: str | None = None) -> int:
    """Tool calls the stack's NSQL worker has run (of ``tool``, or of every tool)."""
    assert stack.nsql is not None and stack.nsql.tool_consumer is not None
    handler = stack.nsql.tool_consumer.handler
    assert isinstance(handler, ToolHandler)
    return handler.calls[tool] if tool else handler.calls.total()


def _tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m.get("role") == "tool"]


async def test_the_model_answers_from_rows_its_sql_tool_read(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with _analyst(nats_server, nsql_engine, tmp_path) as (stack, upstream):
        upstream.behaviour = Behaviour(
            tool_name="sql", tool_arguments=json.dumps({"query": COUNT_SQL}), echo_tool_result=True
        )
        client = stack.client()
        done = await client.chat.completions.create(
            model="analyst", messages=[{"role": "user", "content": "How many orders came from Europe?"}]
        )
        answer = json.loads(done.choices[0].message.content or "")
        assert answer["rows"] == [{"orders": _europe_orders(nsql_engine)}]
        assert done.choices[0].finish_reason == "stop"
        first, second = (seen.body for seen in upstream.requests[-2:])
        # the first turn was offered every runtime tool; the second got the call and its result
        offered = {t["function"]["name"] for t in first["tools"]}
        assert offered == {"list_datasets", "table_schema", "sample_data", "sql", "nsql"}
        assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "sql"
        assert json.loads(_tool_messages(second)[-1]["content"])["row_count"] == 1
        # before its first turn, list_datasets and table_schema ran: the system message names the tables
        system = first["messages"][0]
        assert system["role"] == "system" and "- sales_data" in system["content"]
        assert "region (" in system["content"] and "secret_data" not in system["content"]
        assert not any(m.get("tool_calls") for m in first["messages"])
        assert done.usage is not None  # both turns' tokens
        assert done.usage.prompt_tokens > len(first["messages"][0]["content"].split())


async def test_tools_read_only_the_models_datasets_through_the_guard(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with _analyst(nats_server, nsql_engine, tmp_path) as (stack, upstream):
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
            upstream.behaviour = Behaviour(tool_name=tool, tool_arguments=arguments, echo_tool_result=True)
            done = await client.chat.completions.create(model="analyst", messages=ask)  # type: ignore[arg-type]
            assert expected(json.loads(done.choices[0].message.content or "")), (tool, done)
        for arguments in ('{"query": "DROP TABLE sales_data"}', '{"sql": 1}', "not json"):
            upstream.behaviour = Behaviour(tool_name="sql", tool_arguments=arguments, echo_tool_result=True)
            done = await client.chat.completions.create(model="analyst", messages=ask)  # type: ignore[arg-type]
            assert "error" in json.loads(done.choices[0].message.content or ""), arguments
        assert admin_rows(nsql_engine, "SELECT count() FROM modelbus.sales_data")[0][0] > 0


async def test_the_loop_stops_at_the_recursion_limit_and_the_last_turn_has_no_runtime_tools(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with _analyst(nats_server, nsql_engine, tmp_path, tools="list_datasets, sql", limit=2) as (
        stack,
        upstream,
    ):
        upstream.behaviour = Behaviour(
            tool_name="list_datasets", tool_arguments='{"page": {turn}}', tool_turns=99
        )
        before = len(upstream.requests)
        done = await stack.client().chat.completions.create(
            model="analyst", messages=[{"role": "user", "content": "loop"}]
        )
        turns = [seen.body for seen in upstream.requests[before:]]
        assert len(turns) == 3  # two turns that called tools, then one offered none
        assert [len(_tool_messages(t)) for t in turns] == [0, 1, 2]
        assert {t["function"]["name"] for t in turns[0]["tools"]} == {"list_datasets", "sql"}
        assert "tools" not in turns[-1]
        assert done.choices[0].message.content == Behaviour().reply


async def test_a_call_repeated_with_the_same_arguments_is_answered_without_tools(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with _analyst(nats_server, nsql_engine, tmp_path) as (stack, upstream):
        calls_before = stack_tool_calls(stack)
        upstream.behaviour = Behaviour(
            tool_name="sql", tool_arguments=json.dumps({"query": COUNT_SQL}), tool_turns=99
        )
        before = len(upstream.requests)
        done = await stack.client().chat.completions.create(
            model="analyst", messages=[{"role": "user", "content": "Europe?"}], tool_choice="required"
        )
        turns = [seen.body for seen in upstream.requests[before:]]
        # the call ran once; asked again with the same arguments, the model got a turn without tools
        assert len(turns) == 3 and "tools" not in turns[-1]
        # a required call holds for the first turn only (else the model could never answer)
        assert turns[0]["tool_choice"] == "required" and "tool_choice" not in turns[1]
        assert len(_tool_messages(turns[-1])) == 1
        assert stack_tool_calls(stack) == calls_before + 3  # list_datasets and table_schema first
        assert done.choices[0].message.content == Behaviour().reply


async def test_client_tools_reach_the_client_and_tool_choice_none_turns_runtime_tools_off(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    async with _analyst(nats_server, nsql_engine, tmp_path) as (stack, upstream):
        client = stack.client()
        ask = [{"role": "user", "content": "weather?"}]
        upstream.behaviour = Behaviour(tool_name="get_weather")
        done = await client.chat.completions.create(model="analyst", messages=ask, tools=[weather])  # type: ignore[arg-type, list-item]
        [call] = done.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather" and done.choices[0].finish_reason == "tool_calls"
        offered = [t["function"]["name"] for t in upstream.requests[-1].body["tools"]]
        assert offered[0] == "get_weather" and "sql" in offered  # the client's, then the runtime's

        upstream.behaviour = Behaviour(reply="no tools")
        done = await client.chat.completions.create(model="analyst", messages=ask, tool_choice="none")  # type: ignore[arg-type]
        assert done.choices[0].message.content == "no tools"
        assert "tools" not in upstream.requests[-1].body

        # a model without tools passes the client's through untouched
        upstream.behaviour = Behaviour()
        done = await client.chat.completions.create(model="plain", messages=ask, tools=[weather])  # type: ignore[arg-type, list-item]
        assert [t["function"]["name"] for t in upstream.requests[-1].body["tools"]] == ["get_weather"]


async def test_a_stream_shows_tool_progress_when_asked_and_ends_with_the_answer(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with _analyst(nats_server, nsql_engine, tmp_path) as (stack, upstream):
        upstream.behaviour = Behaviour(
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
                if progress:  # Spice's: a JSON line before each call and one after it
                    events = [n["choices"][0]["delta"]["content"] for n in notes]
                    assert all(e.startswith("!---jsonl") for e in events)
                    decoded = [json.loads(e.removeprefix("!---jsonl")) for e in events]
                    titles = [d["title"] for d in decoded]
                    assert titles == [
                        title
                        for tool in ("list_datasets", "table_schema", "sql")
                        for title in (f"Calling '{tool}' tool", f"'{tool}' tool completed successfully")
                    ]
                    before, after = decoded[-2:]
                    assert json.loads(before["content"]) == {"query": COUNT_SQL}
                    assert after["id"] == before["id"] != "" and len(decoded) == 6
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
    async with _analyst(nats_server, None, tmp_path) as (stack, upstream):
        upstream.behaviour = Behaviour(
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
    async with _analyst(nats_server, nsql_engine, tmp_path) as (stack, upstream):
        upstream.behaviour = Behaviour(fail_status=status)
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
                tool_name="sql",
                tool_arguments=json.dumps({"query": COUNT_SQL + " AND {turn} > 0"}),
                tool_turns=2,
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
                assert json.loads(tool["input"])["query"].startswith(COUNT_SQL)
            assert len({t["span_id"] for t in tools}) == 2
            # the NSQL worker's run of each call is the tool span's child
            runs = await rows_when(nsql_engine, table, "task = 'tool_call' AND labels['tool'] = 'sql'", 2)
            assert {r["parent_span_id"] for r in runs} == {t["span_id"] for t in tools}


@pytest.mark.slow
async def test_the_local_model_with_tools_answers_from_its_sql_tool(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    """The real local model (Qwen2.5-Coder-1.5B) with ``tools: auto`` over the sales_data sample."""
    config = parse_config(
        FAST_RUNTIME
        + "  nsql: {request_timeout: 120}\n  chat: {request_timeout: 300}\n"
        + "models:\n  - name: local\n    from: local:qwen2.5-coder-1.5b-instruct\n"
        + "    datasets: [sales_data]\n    params: {tools: auto, parallel: 2}\n"
        + "datasets:\n  - name: sales_data\n    from: sample:sales_data\n",
        {},
    )
    async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack:
        europe_sql = "SELECT sum(total) FROM modelbus.sales_data WHERE region = 'Europe'"
        [(europe,)] = admin_rows(nsql_engine, europe_sql)
        done = await stack.client().chat.completions.create(
            model="local", temperature=0, max_tokens=200,
            messages=[{"role": "user", "content": "What is the total of all orders for the region Europe?"}],
        )  # fmt: skip
        assert stack_tool_calls(stack, "sql") >= 1  # the model ran SQL
        answer = (done.choices[0].message.content or "").replace(",", "")
        assert f"{europe:.2f}" in answer or f"{europe:.0f}" in answer, answer


def test_sql_a_small_model_writes_in_its_answer_is_read_as_its_sql_call() -> None:
    written = "You can run:\n\n```sql\nSELECT count() FROM sales_data;\n```\nDone."
    [call] = sql_written_in({"content": written})
    assert call["function"] == {"name": "sql", "arguments": '{"query":"SELECT count() FROM sales_data"}'}
    assert sql_written_in({"content": "```python\nprint(1)\n```"}) == []
    assert sql_written_in({"content": "```sql\nDROP TABLE t\n```"}) == []  # not a query: left as the answer
    assert sql_written_in({"content": None}) == []


@pytest.mark.parametrize(
    ("content", "left"),
    [
        ('{"name": "sql", "arguments": {"query": "SELECT 1"}}', None),
        ('```json\n{"name": "sql", "arguments": {"query": "SELECT 1"}}\n```', None),
        (
            'I will run it.\n\n```json\n{"name": "sql", "arguments": {"query": "SELECT 1"}}\n```',
            "I will run it.",
        ),
        ('<tool_call>{"name": "sql", "arguments": {"query": "SELECT 1"}}</tool_call> ok', "ok"),
    ],
)
def test_tool_calls_a_small_model_writes_in_its_text_are_read_in_each_of_its_forms(
    content: str, left: str | None
) -> None:
    choice: dict[str, Any] = {"message": {"role": "assistant", "content": content}}
    parse_tool_calls(choice, {"sql": {"type": "object"}})
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "sql", "arguments": '{"query":"SELECT 1"}'}
    assert (choice["message"]["content"], choice["finish_reason"]) == (left, "tool_calls")
    prose: dict[str, Any] = {"message": {"content": '```json\n{"name": "other"}\n```'}}
    parse_tool_calls(prose, {"sql": {"type": "object"}})  # not an offered tool: the text stays
    assert "tool_calls" not in prose["message"]
