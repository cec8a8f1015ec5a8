"""Chat against the real local model (Qwen2.5-Coder-0.5B, llama.cpp), through the whole system."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from modelbus.config import parse_config
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.stack import FAST_RUNTIME, running_stack

pytestmark = pytest.mark.slow
LOCAL = FAST_RUNTIME + "models:\n  - name: qwen2.5-coder\n    from: local:qwen2.5-coder-0.5b-instruct\n"
MODEL = "qwen2.5-coder"


async def test_short_completion_stream_json_schema_and_cancellation(nats_server: EmbeddedNats) -> None:
    config = parse_config(LOCAL, {})
    async with running_stack(nats_server.url, config) as stack:
        await stack.wait_ready(MODEL, timeout=120)
        client = stack.client()

        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
        assert completion.model == MODEL
        assert completion.choices[0].message.content
        assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8

        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

        # json_schema is enforced with a grammar: the output parses and has the required key
        schema = {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}
        structured = await client.chat.completions.create(
            model=MODEL, max_tokens=60,
            messages=[{"role": "user", "content": "Write SQL that counts the rows of table t."}],
            response_format={"type": "json_schema", "json_schema": {"name": "q", "schema": schema}},
        )  # fmt: skip
        assert isinstance(json.loads(structured.choices[0].message.content or "")["sql"], str)

        # a client that hangs up stops the generation: its slot is free again long before
        # the 400 tokens asked for could have been generated
        state = stack.workers[0].providers[MODEL].state
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long essay."}],
                "max_tokens": 400, "stream": True}  # fmt: skip
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    break
        with anyio.fail_after(5):
            while state.in_flight:
                await anyio.sleep(0.02)


async def test_responses_on_the_local_model_plain_stream_json_schema_and_a_tool_round_trip(
    nats_server: EmbeddedNats,
) -> None:
    config = parse_config(LOCAL, {})
    async with running_stack(nats_server.url, config) as stack:
        await stack.wait_ready(MODEL, timeout=120)
        client = stack.client()
        plain = await client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8)
        assert plain.status in ("completed", "incomplete") and plain.output_text
        assert plain.usage is not None and 0 < plain.usage.output_tokens <= 8

        events = [e async for e in await client.responses.create(
            model=MODEL, input="Count to five.", max_output_tokens=12, stream=True
        )]  # fmt: skip
        finished = ("response.completed", "response.incomplete")
        assert events[0].type == "response.created" and events[-1].type in finished
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas and deltas == events[-1].response.output_text

        schema = {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}
        structured = await client.responses.create(
            model=MODEL, input="Write SQL that counts the rows of table t.", max_output_tokens=60,
            text={"format": {"type": "json_schema", "name": "q", "schema": schema}},
        )  # fmt: skip
        assert isinstance(json.loads(structured.output_text)["sql"], str)

        city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        tool = {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": city,
        }
        called = await client.responses.create(
            model=MODEL, input="What is the weather in Paris?", tools=[tool], tool_choice="required",
            max_output_tokens=60, temperature=0,
        )  # fmt: skip
        calls = [item for item in called.output if item.type == "function_call"]
        assert calls and calls[0].name == "get_weather" and "city" in json.loads(calls[0].arguments)
        answered = await client.responses.create(
            model=MODEL, previous_response_id=called.id, tools=[tool], max_output_tokens=40, temperature=0,
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
        )  # fmt: skip
        assert answered.status in ("completed", "incomplete") and answered.output
