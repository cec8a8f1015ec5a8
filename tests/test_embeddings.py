"""Embeddings end to end with the official openai SDK: ingress → NATS → embedding worker (batching) → the
stand-in upstream's ``/embeddings``; and embedding models listed in ``/v1/models`` with their datasets."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import openai
import pytest

from modelbus.config import Config, NatsSettings, parse_config
from modelbus.ingress.server import IngressServer
from modelbus.registry import Registry
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from modelbus.workers.embed.worker import EmbedWorker
from modelbus.workers.model.worker import ModelWorker
from tests.support.stack import FAST_RUNTIME
from tests.support.upstream import EMBEDDING_DIMENSIONS, UpstreamServer, embedding_of

MODEL = "text-embedding-3-small"


def config_for(endpoint: str, *, batch_wait: float = 0.0, dimensions: bool = False) -> Config:
    return parse_config(
        FAST_RUNTIME
        + "  embed: {max_inputs: 64}\n"
        + "datasets:\n  - name: text-dataset-1\n    from: sample:sales_data\n"
        + "  - name: text-dataset-2\n    from: sample:customers\n"
        + "models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: k}}\n"
        + f"embeddings:\n  - name: {MODEL}\n    from: openai:{MODEL}\n"
        + "    datasets: [text-dataset-1, text-dataset-2]\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: k, batch_wait: {batch_wait}, max_batch: 16,"
        + f" dimensions: {'true' if dimensions else 'false'}, recheck_initial: 0.05, recheck_max: 0.2}}\n",
        {},
    )


@dataclass
class Embedding:
    ingress: IngressServer
    worker: EmbedWorker

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.ingress.url}/v1", api_key="none", max_retries=0)


@asynccontextmanager
async def embedding_stack(nats_url: str, config: Config, model: str = MODEL) -> AsyncIterator[Embedding]:
    """Registry, a model worker (when models are configured), an embedding worker and the ingress, each on
    its own connection; entered once ``model`` is ready."""
    async with AsyncExitStack() as stack:

        async def connection(name: str) -> object:
            return await stack.enter_async_context(connected(config.runtime.nats, nats_url, name=name))

        await stack.enter_async_context(Registry(await connection("registry"), config))  # type: ignore[arg-type]
        if config.models:
            await stack.enter_async_context(
                ModelWorker(await connection("model"), config, config.models, environ={})  # type: ignore[arg-type]
            )
        worker = await stack.enter_async_context(
            EmbedWorker(await connection("embed"), config, config.embeddings, environ=os.environ)  # type: ignore[arg-type]
        )
        ingress = await stack.enter_async_context(IngressServer(config, await connection("ingress"), port=0))  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=ingress.url) as http:
            with anyio.fail_after(90):
                while (await http.get(f"/v1/models/{model}", params={"status": "true"})).json().get(
                    "status"
                ) != "ready":
                    await anyio.sleep(0.05)
        yield Embedding(ingress, worker)


async def test_one_input_a_batch_and_base64_through_the_sdk(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        embedding_stack(nats_server.url, config_for(upstream.url)) as system,
    ):
        client = system.client()
        try:
            one = await client.embeddings.create(model=MODEL, input="hello world")  # the SDK asks for base64
            assert one.object == "list" and one.model == MODEL and len(one.data) == 1
            assert one.data[0].embedding == pytest.approx(embedding_of("hello world"), abs=1e-6)
            assert len(one.data[0].embedding) == EMBEDDING_DIMENSIONS
            assert one.usage.prompt_tokens == 2 and one.usage.total_tokens == 2
            assert upstream.upstream.requests[-1].body["model"] == MODEL

            texts = ["a b c", "d", "e f"]
            batch = await client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
            assert [d.index for d in batch.data] == [0, 1, 2]
            assert [d.embedding for d in batch.data] == [
                pytest.approx(embedding_of(t), abs=1e-6) for t in texts
            ]
            again = await client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
            assert [d.embedding for d in again.data] == [d.embedding for d in batch.data]  # deterministic
        finally:
            await client.close()
        async with httpx.AsyncClient(base_url=system.ingress.url) as http:
            raw = (
                await http.post(
                    "/v1/embeddings", json={"model": MODEL, "input": "d", "encoding_format": "base64"}
                )
            ).json()
        packed = base64.b64decode(raw["data"][0]["embedding"])
        assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(
            embedding_of("d"), abs=1e-6
        )


async def test_concurrent_requests_share_engine_calls(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        embedding_stack(nats_server.url, config_for(upstream.url, batch_wait=0.2)) as system,
    ):
        client = system.client()
        before = len(upstream.upstream.requests)
        try:
            answers: list[list[float]] = [[] for _ in range(12)]

            async def one(i: int) -> None:
                answers[i] = (
                    (await client.embeddings.create(model=MODEL, input=f"text {i}")).data[0].embedding
                )

            async with anyio.create_task_group() as tg:
                for i in range(12):
                    tg.start_soon(one, i)
        finally:
            await client.close()
        assert answers == [pytest.approx(embedding_of(f"text {i}"), abs=1e-6) for i in range(12)]
        stats = system.worker.batchers[MODEL].stats
        assert stats.requests == 12 and stats.batched_requests >= 2
        assert stats.batches < 12 and len(upstream.upstream.requests) - before == stats.batches
        assert (
            max(len(r.body["input"]) for r in upstream.upstream.requests[before:]) == stats.largest_batch > 1
        )
        # and the same counters are what $SRV.STATS reports for the worker
        async with connected(NatsSettings(), nats_server.url, name="probe") as nc:
            reply = await nc.request("$SRV.STATS.modelbus-embed-worker", b"", timeout=5)
        reported = json.loads(reply.data)["endpoints"][0]["data"]["embed"][MODEL]
        assert (reported["batches"], reported["batched_requests"]) == (stats.batches, stats.batched_requests)


async def test_embedding_models_are_listed_with_their_datasets_in_json_and_csv(
    nats_server: EmbeddedNats,
) -> None:
    async with (
        UpstreamServer() as upstream,
        embedding_stack(nats_server.url, config_for(upstream.url)) as system,
    ):
        async with httpx.AsyncClient(base_url=system.ingress.url) as http:
            listed = (await http.get("/v1/models", params={"status": "true"})).json()["data"]
            rows = list(
                csv.DictReader(io.StringIO((await http.get("/v1/models", params={"format": "csv"})).text))
            )
    entry = next(m for m in listed if m["id"] == MODEL)
    assert entry["datasets"] == ["text-dataset-1", "text-dataset-2"]
    assert (entry["owned_by"], entry["status"]) == (f"openai:{MODEL}", "ready")
    row = next(r for r in rows if r["id"] == MODEL)
    assert row["datasets"] == "text-dataset-1,text-dataset-2"


@pytest.mark.parametrize(
    ("path", "body", "status", "named"),
    [
        ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "nope"),
        ("/v1/embeddings", {"model": "gpt-4.1", "input": "x"}, 404, "chat model"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 4}, 400, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": ["x"] * 65}, 400, "max_inputs"),
        ("/v1/embeddings", {"model": MODEL, "input": []}, 400, "empty"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, 400,
         "embedding model"),
    ],
)  # fmt: skip
async def test_bad_requests_are_4xx_that_say_why(
    nats_server: EmbeddedNats, path: str, body: dict[str, object], status: int, named: str
) -> None:
    async with (
        UpstreamServer() as upstream,
        embedding_stack(nats_server.url, config_for(upstream.url)) as system,
    ):
        before = len(upstream.upstream.requests)
        async with httpx.AsyncClient(base_url=system.ingress.url) as http:
            response = await http.post(path, json=body)
    assert response.status_code == status, response.text
    assert named in json.dumps(response.json()["error"])
    assert len(upstream.upstream.requests) == before


async def test_dimensions_pass_through_where_the_model_takes_them(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        embedding_stack(nats_server.url, config_for(upstream.url, dimensions=True)) as system,
    ):
        client = system.client()
        try:
            short = await client.embeddings.create(model=MODEL, input=[[1, 2, 3]], dimensions=4)
        finally:
            await client.close()
        assert len(short.data[0].embedding) == 4
        assert upstream.upstream.requests[-1].body["input"] == [[1, 2, 3]]  # token arrays go as they are


LOCAL = "e5-small"


@pytest.mark.slow
async def test_the_local_model_embeds_meaning_deterministically(nats_server: EmbeddedNats) -> None:
    config = parse_config(
        FAST_RUNTIME + f"embeddings:\n  - name: {LOCAL}\n    from: local:multilingual-e5-small\n", {}
    )
    async with embedding_stack(nats_server.url, config, model=LOCAL) as system:
        client = system.client()
        try:
            texts = [
                "The cat sits on the mat.", "A kitten is lying on a rug.",
                "Quarterly revenue grew by eight percent.",
                "Where is the train station?", "Où est la gare ?", "The stock market fell sharply today.",
            ]  # fmt: skip
            answer = await client.embeddings.create(model=LOCAL, input=texts)
            again = await client.embeddings.create(model=LOCAL, input=texts[0])
        finally:
            await client.close()
    vectors = [d.embedding for d in answer.data]
    assert all(len(v) == 384 for v in vectors)
    assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)  # the same text, the same vector

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / (
            sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5
        )

    cat, kitten, revenue, station, gare, market = vectors
    assert cos(cat, kitten) > cos(cat, revenue) and cos(kitten, cat) > cos(kitten, market)
    assert cos(station, gare) > cos(station, market) and cos(gare, station) > cos(
        gare, revenue
    )  # across languages
    assert answer.usage.prompt_tokens > len(texts)


@pytest.mark.slow
async def test_a_killed_local_engine_turns_the_model_error_then_ready_again(
    nats_server: EmbeddedNats,
) -> None:
    config = parse_config(
        FAST_RUNTIME + f"embeddings:\n  - name: {LOCAL}\n    from: local:multilingual-e5-small\n"
        "    params: {recheck_initial: 0.1, recheck_max: 0.5}\n",
        {},
    )
    async with embedding_stack(nats_server.url, config, model=LOCAL) as system:
        embedder = system.worker.embedders[LOCAL]
        first = embedder.pid  # type: ignore[union-attr]
        assert first is not None
        os.kill(first, signal.SIGKILL)
        async with httpx.AsyncClient(base_url=system.ingress.url) as http:

            async def status() -> dict[str, object]:
                view: dict[str, object] = (
                    await http.get(f"/v1/models/{LOCAL}", params={"status": "true"})
                ).json()
                return view

            with anyio.fail_after(30):
                while (view := await status())["status"] != "error":
                    await anyio.sleep(0.05)
            assert view["error"] == {"category": "model", "type": "internal", "code": "model.internal"}
            assert "killed by SIGKILL" in str(view["error_message"])
            with anyio.fail_after(60):
                while (await status())["status"] != "ready":
                    await anyio.sleep(0.05)
            answer = await http.post("/v1/embeddings", json={"model": LOCAL, "input": "back again"})
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
        assert embedder.pid not in (None, first)  # type: ignore[union-attr]
