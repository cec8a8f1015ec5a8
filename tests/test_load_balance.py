"""Spice's ``workers:`` (``load_balance``): one model name answered by its members, with fallback.

Two stand-in upstreams play two providers: one fails as told, the other answers. The official SDK is the
client; the registry, the model worker and the ingress are the real ones.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from modelbus.config import parse_config
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.stack import FAST_RUNTIME, Stack, running_stack
from tests.support.upstream import Behaviour, UpstreamServer

ASK: list[Any] = [{"role": "user", "content": "hello"}]


def _routing(policy: str) -> str:
    if policy == "order":
        return "[{from: primary, order: 1}, {from: backup, order: 2}]"
    if policy == "weight":
        return "[{from: primary, weight: 1}, {from: backup, weight: 1}]"
    return "[{from: primary}, {from: backup}]"


@asynccontextmanager
async def _system(
    nats_url: str, policy: str = "order"
) -> AsyncIterator[tuple[Stack, UpstreamServer, UpstreamServer]]:
    async with AsyncExitStack() as stack:
        primary = await stack.enter_async_context(UpstreamServer())
        backup = await stack.enter_async_context(UpstreamServer())
        primary.upstream.behaviour = Behaviour(reply="from primary")
        backup.upstream.behaviour = Behaviour(reply="from backup")
        models = "".join(
            f"  - name: {name}\n    from: openai:gpt-4.1\n"
            f"    params: {{endpoint: '{server.url}', api_key: sk-test, recheck_initial: 0.05, "
            "recheck_max: 0.2}\n"
            for name, server in (("primary", primary), ("backup", backup))
        )
        config = parse_config(
            FAST_RUNTIME + "models:\n" + models
            + "workers:\n  - name: router\n    type: load_balance\n    description: primary, then backup\n"
            + f"    load_balance:\n      routing: {_routing(policy)}\n",
            {},
        )  # fmt: skip
        running = await stack.enter_async_context(running_stack(nats_url, config))
        await running.wait_ready("primary")
        await running.wait_ready("backup")
        await running.wait_ready("router")
        yield running, primary, backup


async def test_the_worker_is_a_model_in_the_listing_with_its_members(nats_server: EmbeddedNats) -> None:
    async with _system(nats_server.url) as (stack, _primary, _backup):
        async with httpx.AsyncClient(base_url=stack.base_url) as http:
            listed = (await http.get("/v1/models", params={"status": "true"})).json()["data"]
            router = next(m for m in listed if m["id"] == "router")
            assert (router["owned_by"], router["status"], router.get("datasets")) == (
                "spiceai",
                "ready",
                None,
            )
            nsql = await http.post("/v1/nsql", json={"query": "how many?", "model": "router"})
            assert nsql.status_code == 400 and nsql.json()["error"]["code"] == "model_not_supported"
        models = [m.id for m in (await stack.client().models.list()).data]
        assert {"primary", "backup", "router"} <= set(models)


async def test_a_member_failing_before_its_first_token_hands_the_request_to_the_next(
    nats_server: EmbeddedNats,
) -> None:
    async with _system(nats_server.url) as (stack, primary, backup):
        client = stack.client()
        done = await client.chat.completions.create(model="router", messages=ASK)
        assert done.choices[0].message.content == "from primary"  # the first in order answers

        for status in (500, 503, 429):
            primary.upstream.behaviour = Behaviour(fail_status=status)
            tried = len(primary.upstream.requests)
            done = await client.chat.completions.create(model="router", messages=ASK)
            assert done.choices[0].message.content == "from backup", status
            assert len(primary.upstream.requests) == tried + 1  # it was asked first

        stream = await client.chat.completions.create(model="router", messages=ASK, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "from backup"

        # a request the member rejects as invalid would be rejected by the next one too: it is the answer
        primary.upstream.behaviour = Behaviour(fail_status=400, fail_message="bad request")
        asked = len(backup.upstream.requests)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="router", messages=ASK)
        assert len(backup.upstream.requests) == asked


async def test_when_every_member_fails_the_client_gets_one_error_naming_them(
    nats_server: EmbeddedNats,
) -> None:
    async with _system(nats_server.url) as (stack, primary, backup):
        client = stack.client()
        primary.upstream.behaviour = Behaviour(fail_status=500, fail_message="primary broke")
        backup.upstream.behaviour = Behaviour(fail_status=502, fail_message="backup broke")
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(model="router", messages=ASK)
        assert failed.value.status_code == 502
        message = str(failed.value)
        assert "`primary`" in message and "`backup`" in message and "primary broke" in message

        primary.upstream.behaviour = Behaviour(fail_status=429)
        backup.upstream.behaviour = Behaviour(fail_status=429)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="router", messages=ASK)
        assert limited.value.response.headers["retry-after"] == "1"


async def test_a_member_that_is_not_ready_is_skipped_and_the_worker_follows_its_members(
    nats_server: EmbeddedNats,
) -> None:
    async with _system(nats_server.url) as (stack, primary, backup):
        primary.upstream.behaviour = Behaviour(api_key="sk-other")  # the key is now refused: model.auth
        with pytest.raises(openai.APIStatusError):
            await stack.client().chat.completions.create(model="primary", messages=ASK)
        await stack.wait_status("primary", "error")
        asked = len(primary.upstream.requests)
        done = await stack.client().chat.completions.create(model="router", messages=ASK)
        assert done.choices[0].message.content == "from backup"
        assert len(primary.upstream.requests) == asked

        backup.upstream.behaviour = Behaviour(api_key="sk-other")
        with pytest.raises(openai.APIStatusError):
            await stack.client().chat.completions.create(model="backup", messages=ASK)
        view = await stack.wait_status("router", "error")
        assert view["error"]["code"].startswith("worker.")
        assert "primary" in view["error_message"] and "backup" in view["error_message"]
        with pytest.raises(openai.APIStatusError) as refused:
            await stack.client().chat.completions.create(model="router", messages=ASK)
        assert refused.value.status_code == 503

        primary.upstream.behaviour = Behaviour(reply="from primary")  # the key works again
        await stack.wait_status("router", "ready")


@pytest.mark.parametrize("policy", ["weight", "round_robin"])
async def test_weight_and_round_robin_spread_requests_over_the_members(
    nats_server: EmbeddedNats, policy: str
) -> None:
    async with _system(nats_server.url, policy) as (stack, _primary, _backup):
        client = stack.client()
        answers = [
            (await client.chat.completions.create(model="router", messages=ASK)).choices[0].message.content
            for _ in range(20)
        ]
        counts = collections.Counter(answers)
        assert set(counts) == {"from primary", "from backup"}
        if policy == "round_robin":  # in turn
            assert all(a != b for a, b in itertools.pairwise(answers))


async def test_the_responses_api_goes_through_the_worker_too(nats_server: EmbeddedNats) -> None:
    async with _system(nats_server.url) as (stack, primary, _backup):
        primary.upstream.behaviour = Behaviour(fail_status=500)
        response = await stack.client().responses.create(model="router", input="hello")
        assert response.output_text == "from backup"
