"""Token usage, and the usage chunk modelbus adds to a stream when the backend sends none."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import msgspec

__all__ = ("UsageCounter", "completion_as_chunks", "completion_as_stream", "estimate_tokens", "usage_chunk")

_encoder = msgspec.json.Encoder()


def estimate_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb for English with BPE tokenizers."""
    return math.ceil(len(text) / 4) if text else 0


def prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


class UsageCounter:
    """Counts what a stream produced, to compute usage when the backend reports none."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.prompt_tokens = estimate_tokens(prompt_text(body))
        self.completion_tokens = 0

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def usage_chunk(chunk_id: str, model: str, usage: dict[str, int], created: int | None = None) -> bytes:
    """OpenAI's final stream chunk for ``stream_options.include_usage``: no choices, only usage."""
    return _encoder.encode(
        {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created or int(time.time()),
            "model": model,
            "choices": [],
            "usage": usage,
        }
    )


def completion_as_chunks(result: dict[str, Any]) -> list[bytes]:
    """A whole ``chat.completion`` (its first choice) as the stream chunks that carry the same answer."""
    chunk_id = result.get("id") or f"chatcmpl-{uuid.uuid4().hex}"
    created, model = result.get("created") or int(time.time()), result.get("model", "")

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _encoder.encode(
            {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [choice]}
        )  # fmt: skip

    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    if message.get("content"):
        chunks.append(chunk({"content": message["content"]}, None))
    for i, tool_call in enumerate(message.get("tool_calls") or []):
        chunks.append(chunk({"tool_calls": [{"index": i, **tool_call}]}, None))
    chunks.append(chunk({}, choice.get("finish_reason") or "stop"))
    return chunks


def completion_as_stream(result: dict[str, Any], *, include_usage: bool, model: str) -> list[bytes]:
    """A whole ``chat.completion`` as the stream that carries it, with the usage chunk when asked for."""
    chunks = completion_as_chunks(result)
    if include_usage and result.get("usage"):
        chunks.append(usage_chunk(result.get("id", ""), model, result["usage"], result.get("created")))
    return chunks
