"""``POST /v1/responses`` end to end with the official openai SDK: ingress → NATS → model worker → the
stand-in upstream, adapted onto chat completions or passed through to a native Responses API."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.processes import modelbus_argv, service, wait_http_ok
from tests.support.stack import FAST_RUNTIME, running_stack, stand_in_config
from tests.support.upstream import Behaviour, UpstreamServer

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_a_plain_response_is_adapted_onto_chat_and_stored(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        client = stack.client()
        response = await client.responses.create(
            model="gpt-4.1", instructions="Be brief.", input="Hello!", max_output_tokens=50, temperature=0.2,
            metadata={"case": "plain"},
        )  # fmt: skip
        assert response.object == "response" and response.status == "completed"
        assert response.id.startswith("resp_") and response.model == "gpt-4.1"
        assert response.output_text == "Hello from the stand-in."
        assert response.usage is not None and response.usage.output_tokens == 4  # the stand-in counts words
        assert response.usage.total_tokens == response.usage.input_tokens + 4
        assert response.metadata == {"case": "plain"}
        sent = upstream.upstream.requests[-1].body
        assert sent["messages"] == [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}
        ]  # fmt: skip
        assert (sent["max_tokens"], sent["temperature"]) == (50, 0.2)

        again = await client.responses.retrieve(response.id)
        assert again.id == response.id and again.output_text == response.output_text
        # continued from the stored conversation: the first question and answer go first
        follow = await client.responses.create(
            model="gpt-4.1", input="And then?", previous_response_id=response.id
        )
        assert follow.previous_response_id == response.id
        assert [m["content"] for m in upstream.upstream.requests[-1].body["messages"]] == [
            "Hello!", "Hello from the stand-in.", "And then?"
        ]  # fmt: skip
        await client.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)
        unstored = await client.responses.create(model="gpt-4.1", input="Hi", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unstored.id)


async def test_a_stream_is_the_typed_events_in_order(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        upstream.upstream.behaviour = Behaviour(reply="one two three")
        stream = await stack.client().responses.create(model="gpt-4.1", input="Count", stream=True)
        events = [event async for event in stream]
        kinds = [e.type for e in events]
        assert kinds == [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
            "response.output_text.delta", "response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed",
        ]  # fmt: skip
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "one two three"
        final = events[-1].response
        assert final.output_text == "one two three" and final.usage is not None
        assert final.usage.output_tokens == 3
        stored = await stack.client().responses.retrieve(final.id)
        assert stored.output_text == "one two three"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_function_tool_round_trip(nats_server: EmbeddedNats, stream: bool) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        client = stack.client()
        if stream:
            events = [e async for e in await client.responses.create(
                model="gpt-4.1", input="Weather in Paris?", tools=[WEATHER], stream=True
            )]  # fmt: skip
            kinds = [e.type for e in events]
            assert "response.function_call_arguments.delta" in kinds
            assert "response.function_call_arguments.done" in kinds
            first = events[-1].response
        else:
            first = await client.responses.create(model="gpt-4.1", input="Weather in Paris?", tools=[WEATHER])
        calls = [item for item in first.output if item.type == "function_call"]
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
        sent = upstream.upstream.requests[-1].body
        function = {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": WEATHER["parameters"],
        }
        assert sent["tools"] == [{"type": "function", "function": function}]
        answer = await client.responses.create(
            model="gpt-4.1", previous_response_id=first.id, tools=[WEATHER],
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
        )  # fmt: skip
        assert answer.output_text == "Hello from the stand-in."
        messages = upstream.upstream.requests[-1].body["messages"]
        assert messages[-2]["tool_calls"][0]["id"] == calls[0].call_id
        assert messages[-1] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny, 21 C"}


async def test_text_format_json_schema_becomes_chat_response_format(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        await stack.client().responses.create(
            model="gpt-4.1", input="A number",
            text={"format": {"type": "json_schema", "name": "number", "schema": schema, "strict": True}},
        )  # fmt: skip
        assert upstream.upstream.requests[-1].body["response_format"] == {
            "type": "json_schema", "json_schema": {"name": "number", "schema": schema, "strict": True}
        }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "web_search_call"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "web_search"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "nope"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "yaml"),
        ({"input": "x", "previous_response_id": "resp_" + "0" * 32}, "previous"),
    ],
)
async def test_unsupported_input_is_a_400_that_names_it(
    nats_server: EmbeddedNats, body: dict[str, Any], named: str
) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        before = len(upstream.upstream.requests)  # the readiness probe's
        async with httpx.AsyncClient(base_url=stack.base_url) as http:
            response = await http.post("/v1/responses", json={"model": "gpt-4.1", **body})
        assert response.status_code == 400, response.text
        assert named in response.json()["error"]["message"].lower()
        assert len(upstream.upstream.requests) == before  # nothing was queued


async def test_native_passthrough_with_this_gateways_ids(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(
            nats_server.url, stand_in_config(upstream.url, model_params="responses_api: native")
        ) as stack,
    ):
        await stack.wait_ready()
        client = stack.client()
        first = await client.responses.create(model="gpt-4.1", input="Hello!")
        assert first.output_text == "Hello from the stand-in." and first.id.startswith("resp_")
        assert not first.id.startswith("resp_upstream")
        sent = upstream.upstream.requests[-1].body
        assert sent["store"] is False and sent["model"] == "gpt-4.1"
        events = [e async for e in await client.responses.create(
            model="gpt-4.1", input="More", previous_response_id=first.id, stream=True
        )]  # fmt: skip
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert events[-1].response.id != first.id and not events[-1].response.id.startswith("resp_upstream")
        # the conversation went upstream whole: the gateway keeps it, the upstream keeps nothing
        assert [item.get("role") for item in upstream.upstream.requests[-1].body["input"]] == [
            "user", "assistant", "user"
        ]  # fmt: skip


async def test_a_stored_response_continues_on_another_ingress_process_and_only_with_its_key(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    keys = ("key-one-1234", "key-two-1234")
    ports = (_free_port(), _free_port())
    async with UpstreamServer() as upstream:
        config = tmp_path / "modelbus.yaml"
        config.write_text(
            FAST_RUNTIME + f"  auth: {{api_keys: [{keys[0]}, {keys[1]}]}}\n"
            f"models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test}}\n"
        )
        common = ("--config", str(config), "--nats-url", nats_server.url)
        with (
            service(modelbus_argv("registry", *common), tmp_path / "registry.log"),
            service(modelbus_argv("worker", "model", *common), tmp_path / "worker.log"),
            service(modelbus_argv("ingress", *common, "--port", str(ports[0])), tmp_path / "ingress-1.log"),
            service(modelbus_argv("ingress", *common, "--port", str(ports[1])), tmp_path / "ingress-2.log"),
        ):
            clients = [
                openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
                for port, key in ((ports[0], keys[0]), (ports[1], keys[0]), (ports[1], keys[1]))
            ]
            first_ingress, second_ingress, stranger = clients
            try:
                for port in ports:
                    await wait_http_ok(f"http://127.0.0.1:{port}/v1/ready")
                first = await first_ingress.responses.create(model="gpt-4.1", input="Hello!")
                follow = await second_ingress.responses.create(
                    model="gpt-4.1", input="Again", previous_response_id=first.id
                )
                assert follow.status == "completed"
                assert [m["content"] for m in upstream.upstream.requests[-1].body["messages"]] == [
                    "Hello!", "Hello from the stand-in.", "Again"
                ]  # fmt: skip
                assert (await second_ingress.responses.retrieve(first.id)).id == first.id
                with pytest.raises(
                    openai.NotFoundError
                ):  # another key finds nothing, not even that it exists
                    await stranger.responses.retrieve(first.id)
                with pytest.raises(openai.BadRequestError):
                    await stranger.responses.create(model="gpt-4.1", input="x", previous_response_id=first.id)
                models = await second_ingress.models.list()
                assert models.data  # every model the route serves says so in its metadata
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[1]}") as http:
                    listed = await http.get(
                        "/v1/models", params={"metadata_fields": "supports_responses_api"},
                        headers={"X-API-Key": keys[0]},
                    )  # fmt: skip
                assert [m["metadata"]["supports_responses_api"] for m in listed.json()["data"]] == [True]
            finally:
                for client in clients:
                    await client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
