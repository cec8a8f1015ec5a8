"""Chat completions end to end: the openai SDK → ingress → NATS → model worker → stand-in upstream."""

from __future__ import annotations

import json
from typing import Literal

import anyio
import httpx
import msgspec
import openai
import pytest

from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.stack import Stack, running_stack, stand_in_config
from tests.support.upstream import Behaviour, UpstreamServer

MESSAGES = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


async def test_create_returns_the_upstream_completion_with_usage_and_request_id(
    nats_server: EmbeddedNats,
) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        raw = await stack.client().chat.completions.with_raw_response.create(
            model="gpt-4.1",
            messages=MESSAGES,
            temperature=0.3,
            seed=7,
            user="u-1",
            max_completion_tokens=50,
            stop=["\n\n"],
            top_p=0.9,
        )
        completion = raw.parse()
        assert raw.headers["x-request-id"]
        assert completion.choices[0].message.content == "Hello from the stand-in."
        assert completion.usage is not None and completion.usage.total_tokens > 0
        sent = upstream.upstream.requests[-1].body
        # passed through as sent, with the provider's model name
        assert sent["messages"] == MESSAGES and sent["model"] == "gpt-4.1"
        assert (sent["temperature"], sent["seed"], sent["user"], sent["max_completion_tokens"]) == (
            0.3,
            7,
            "u-1",
            50,
        )
        assert (sent["stop"], sent["top_p"]) == (["\n\n"], 0.9)


async def test_stream_ends_with_done_and_adds_usage_when_the_upstream_gives_none(
    nats_server: EmbeddedNats,
) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        upstream.upstream.behaviour = Behaviour(reply="one two three four five", send_usage=False)
        stream = await stack.client().chat.completions.create(
            model="gpt-4.1", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "one two three four five"
        assert (
            chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        )  # computed by modelbus
        assert chunks[-1].choices == []

        # the raw SSE: every event a chunk, then data: [DONE]
        async with httpx.AsyncClient(base_url=stack.base_url) as http:
            response = await http.post(
                "/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES, "stream": True}
            )
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [e for e in response.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert all(
            json.loads(e.removeprefix("data: "))["object"] == "chat.completion.chunk" for e in events[:-1]
        )


async def test_tools_come_back_as_tool_calls_plain_and_streamed(nats_server: EmbeddedNats) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        client = stack.client()
        completion = await client.chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,
            tools=tools,
            tool_choice="auto",  # type: ignore[arg-type]
        )
        call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
            "city": "Paris"
        }
        assert completion.choices[0].finish_reason == "tool_calls"
        assert upstream.upstream.requests[-1].body["tool_choice"] == "auto"

        stream = await client.chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,
            tools=tools,
            stream=True,  # type: ignore[arg-type]
        )
        arguments = ""
        async for chunk in stream:
            for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                arguments += delta_call.function.arguments or ""  # type: ignore[union-attr]
        assert json.loads(arguments) == {"city": "Paris"}


async def test_response_format_defaults_and_system_prompt(nats_server: EmbeddedNats) -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "strict": True,
            "schema": {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]},
        },
    }
    async with UpstreamServer() as upstream:
        config = stand_in_config(
            upstream.url,
            model_params="system_prompt: 'You are modelbus.', defaults: {temperature: 0.1, max_tokens: 64}",
        )
        async with running_stack(nats_server.url, config) as stack:
            await stack.wait_ready()
            await stack.client().chat.completions.create(
                model="gpt-4.1",
                messages=MESSAGES,
                response_format=schema,
                temperature=0.9,  # type: ignore[arg-type]
            )
        sent = upstream.upstream.requests[-1].body
        assert sent["response_format"] == schema
        assert sent["temperature"] == 0.9  # the request wins over the default
        assert sent["max_tokens"] == 64  # the default fills what the request left out
        assert sent["messages"][0] == {"role": "system", "content": "You are modelbus."}
        assert sent["messages"][1:] == MESSAGES


@pytest.mark.parametrize(
    ("upstream_status", "exception", "client_status"),
    [
        (401, openai.AuthenticationError, 401),
        (429, openai.RateLimitError, 429),
        (404, openai.BadRequestError, 400),
        (500, openai.InternalServerError, 502),
    ],
)
async def test_upstream_errors_are_mapped_to_typed_sdk_exceptions(
    nats_server: EmbeddedNats,
    upstream_status: int,
    exception: type[openai.APIStatusError],
    client_status: int,
) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        upstream.upstream.behaviour = Behaviour(fail_status=upstream_status, fail_message="upstream says no")
        with pytest.raises(exception) as caught:
            await stack.client().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert caught.value.status_code == client_status
        body = caught.value.response.json()
        assert set(body["error"]) == {"message", "type", "code", "param"}
        assert "upstream says no" in body["error"]["message"]

        if upstream_status == 401:
            return  # a revoked key also turns the model to error (its own test, below)
        # the same failure in a stream, before any chunk: an HTTP error, not a 200 stream
        with pytest.raises(exception):
            await stack.client().chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)


async def test_unknown_model_404_and_not_ready_503(nats_server: EmbeddedNats) -> None:
    async with UpstreamServer() as upstream:
        upstream.upstream.behaviour = Behaviour(fail_status=401)
        async with running_stack(nats_server.url, stand_in_config(upstream.url)) as stack:
            client = stack.client()
            with pytest.raises(openai.NotFoundError) as missing:
                await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
            assert missing.value.code == "model_not_found"
            with anyio.fail_after(10):
                while True:  # the model is known, and in error (model.auth) from its first check
                    try:
                        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
                    except openai.InternalServerError as exc:
                        if exc.status_code == 503 and "model.auth" in exc.message:
                            break
                    await anyio.sleep(0.05)


async def test_malformed_and_oversized_bodies_are_4xx_and_nothing_dies(nats_server: EmbeddedNats) -> None:
    async with UpstreamServer() as upstream:
        config = stand_in_config(upstream.url, extra_runtime="  http: {max_body_bytes: 2048}\n")
        async with running_stack(nats_server.url, config) as stack:
            await stack.wait_ready()
            async with httpx.AsyncClient(base_url=stack.base_url) as http:
                bad = [
                    b"{not json",
                    b"[]",
                    b'{"model": "gpt-4.1"}',
                    b'{"model": 5, "messages": []}',
                    b'{"model": "gpt-4.1", "messages": [{"role": "wizard", "content": "x"}]}',
                    b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}], "top_p": "x"}',
                    b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}], "n": 0}',
                ]
                for body in bad:
                    response = await http.post(
                        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
                    )
                    assert response.status_code == 400, body
                    assert set(response.json()["error"]) == {"message", "type", "code", "param"}
                big = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 4096}]}
                response = await http.post("/v1/chat/completions", json=big)
                assert response.status_code == 413
                assert response.json()["error"]["code"]
                good = await http.post(
                    "/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES}
                )
                assert good.status_code == 200
        assert upstream.upstream.requests  # only the good one reached the upstream
        assert len(upstream.upstream.requests) == 1 + 1  # + the readiness check


async def test_a_client_request_id_may_repeat_and_hold_any_characters(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
            body = {"model": "gpt-4.1", "messages": MESSAGES}
            for _ in range(
                2
            ):  # the same id twice, with a dot: neither is dropped as a duplicate, neither hangs
                response = await http.post(
                    "/v1/chat/completions", json=body, headers={"x-request-id": "a.b-1"}
                )
                assert response.status_code == 200
                assert response.headers["x-request-id"] == "a.b-1"


async def test_a_revoked_key_turns_the_model_to_error_until_it_works_again(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        upstream.upstream.behaviour = Behaviour(fail_status=401, fail_message="key revoked")
        with pytest.raises(openai.AuthenticationError):
            await stack.client().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        view = await stack.wait_status("gpt-4.1", "error", timeout=10)
        assert view["error"]["code"] == "model.auth"
        upstream.upstream.behaviour = Behaviour()
        await stack.wait_ready()  # re-checked with backoff, and back on its own


async def test_requests_queued_for_a_model_that_turns_error_get_503_at_once_and_never_run(
    nats_server: EmbeddedNats,
) -> None:
    async with UpstreamServer() as upstream:
        config = stand_in_config(upstream.url, model_params="capacity: 1")
        chat = msgspec.structs.replace(config.runtime.chat, error_grace=0.3)
        config = msgspec.structs.replace(config, runtime=msgspec.structs.replace(config.runtime, chat=chat))
        async with running_stack(nats_server.url, config) as stack:
            await _queued_requests_get_503(stack, upstream)


async def _queued_requests_get_503(stack: Stack, upstream: UpstreamServer) -> None:
    """One request takes the only slot and gets a 401 that turns the model to error; two wait behind it."""
    await stack.wait_ready()
    client = stack.client()
    upstream.upstream.behaviour = Behaviour(delay_s=1.0, fail_status=401, fail_message="key revoked")
    outcomes: dict[str, BaseException] = {}

    async def ask(label: str) -> None:
        messages = [{"role": "user", "content": f"request {label}"}]
        try:
            await client.chat.completions.create(model="gpt-4.1", messages=messages)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            outcomes[label] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "first")
        with anyio.fail_after(10):  # the one slot is taken: the next request waits in the queue
            while not any("request first" in json.dumps(r.body) for r in upstream.upstream.requests):
                await anyio.sleep(0.02)
        tg.start_soon(ask, "second")
        tg.start_soon(ask, "third")
    assert isinstance(outcomes["first"], openai.AuthenticationError)
    for queued in ("second", "third"):  # not the 504 of a 30 s deadline: the model said it cannot serve
        error = outcomes[queued]
        assert error.status_code == 503, error
        assert error.body["code"] == "model_not_ready" and "model.auth" in error.body["message"]  # type: ignore[index]
    upstream.upstream.behaviour = Behaviour()
    await stack.wait_ready()  # recovered: the cancelled requests are skipped, not answered late
    await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)  # type: ignore[arg-type]
    bodies = [json.dumps(r.body) for r in upstream.upstream.requests]
    assert not any("request second" in b or "request third" in b for b in bodies)


LONG = [{"role": "user", "content": "word " * 50}]  # 50 of the stand-in's tokens; its readiness ping is 1


@pytest.mark.parametrize(
    ("wire", "error_events"),
    [("openai", False), ("llama-server", False), ("llama-server", True)],
    ids=["openai", "llama-server", "llama-server-error-event"],
)
async def test_a_prompt_longer_than_the_context_is_400_context_length_exceeded(
    nats_server: EmbeddedNats, wire: Literal["openai", "llama-server"], error_events: bool
) -> None:
    """Both wire formats of the overflow, plain and streamed (older llama-server builds put the streamed
    one in a 200 stream as an ``error:`` event): a 400 the client can act on, before any chunk."""
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        upstream.upstream.behaviour = Behaviour(wire=wire, context_tokens=20, error_events=error_events)
        client = stack.client()
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model="gpt-4.1", messages=LONG, stream=stream)  # type: ignore[call-overload]
            assert caught.value.status_code == 400
            error = caught.value.response.json()["error"]
            assert error["code"] == "context_length_exceeded", error
            assert (error["type"], error["param"]) == ("invalid_request_error", "messages")
            assert "context" in error["message"] and "50 tokens" in error["message"]  # the upstream's sizes
            assert "20 tokens" in error["message"]
        assert len(upstream.upstream.requests) == 1 + 2  # the readiness check, then each once
        # the model is not at fault: a prompt that fits is answered at once
        completion = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == "Hello from the stand-in."


@pytest.mark.parametrize("error_events", [False, True], ids=["data-error", "error-event"])
async def test_an_upstream_error_inside_a_stream_ends_it_with_an_error_event(
    nats_server: EmbeddedNats, error_events: bool
) -> None:
    """llama-server reports a failure after the first chunk inside the 200 stream: the client gets the
    chunks sent so far, then modelbus's error event and no ``[DONE]``; the upstream's error is no chunk."""
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        upstream.upstream.behaviour = Behaviour(
            wire="llama-server",
            reply="one two three four five",
            stream_error_after=2,
            error_events=error_events,
            fail_message="the KV cache is full",
        )
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
            response = await http.post(
                "/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES, "stream": True}
            )
        assert response.status_code == 200
        events = [e for e in response.text.split("\n\n") if e]
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 3  # role, "one", " two"
        assert events[-1].startswith("event: error\ndata: ")
        error = json.loads(events[-1].split("data: ", 1)[1])["error"]
        assert error["code"] == "upstream_error" and error["type"] == "server_error"
        assert "the KV cache is full" in error["message"]


async def test_llama_server_not_supported_is_400_and_loading_is_503_model_not_ready(
    nats_server: EmbeddedNats,
) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, stand_in_config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        client = stack.client()
        upstream.upstream.behaviour = Behaviour(
            wire="llama-server", fail_status=501, fail_message="this chat template does not support tools"
        )
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=stream)  # type: ignore[call-overload]
            error = refused.value.response.json()["error"]
            assert (error["code"], error["type"]) == ("unsupported_feature", "invalid_request_error")
            assert "this chat template does not support tools" in error["message"]
        upstream.upstream.behaviour = Behaviour()  # the model itself is fine: it answers the next request
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)  # type: ignore[arg-type]

        upstream.upstream.behaviour = Behaviour(
            wire="llama-server", fail_status=503, fail_message="Loading model"
        )
        with pytest.raises(openai.InternalServerError) as loading:
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)  # type: ignore[arg-type]
        assert loading.value.status_code == 503
        assert loading.value.response.headers["retry-after"] == "1"
        error = loading.value.response.json()["error"]
        assert (error["code"], error["type"]) == ("model_not_ready", "server_error")
        assert "Loading model" in error["message"]
        # the model cannot serve anyone while it loads: it turns error until its server answers again
        view = await stack.wait_status("gpt-4.1", "error", timeout=10)
        assert view["error"]["code"] == "model.loading"
        upstream.upstream.behaviour = Behaviour()
        await stack.wait_ready()
