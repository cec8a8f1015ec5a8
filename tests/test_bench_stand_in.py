"""The benchmarks' fast stand-in upstream speaks OpenAI's wire format: the official SDK reads its answers."""

from __future__ import annotations

import asyncio

import anyio
import openai

from tests.bench.fast_upstream import serve
from tests.bench.system import free_port


async def test_the_fast_stand_in_answers_the_official_sdk_plain_and_streamed() -> None:
    port = free_port()
    ready = asyncio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(port, words=12, chunks=4, ready=ready))
        with anyio.fail_after(10):
            await ready.wait()
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench")
        messages = [{"role": "user", "content": "x" * 400}]
        reply = await client.chat.completions.create(model="m", messages=messages)
        assert reply.choices[0].message.content == " ".join(["word"] * 12)
        assert reply.usage is not None and reply.usage.completion_tokens == 12
        assert reply.usage.prompt_tokens > 100  # about one per four bytes of the body
        stream = await client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert len(pieces) == 4 and "".join(pieces) == " ".join(["word"] * 12)
        assert usage is not None and usage.completion_tokens == 12
        listed = await client.models.list()
        assert [m.id for m in listed.data] == ["stand-in"]
        await client.close()
        tg.cancel_scope.cancel()
