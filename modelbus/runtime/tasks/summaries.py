"""What a span records of a prompt or an answer, as short text, read from the OpenAI shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from modelbus.schemas.openai import ChatCompletion, ChatCompletionChunk, Usage

__all__ = ("Usage", "chat_input", "completion_output", "stream_piece")

_completion = msgspec.json.Decoder(ChatCompletion)
_chunk = msgspec.json.Decoder(ChatCompletionChunk)


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return ""


def chat_input(messages: Sequence[Any]) -> str:
    """The last user message's text (the question a chat asks), from Structs or plain dicts."""
    for message in reversed(messages):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role == "user":
            return _text(message.get("content") if isinstance(message, dict) else message.content)
    return ""


def completion_output(data: bytes) -> tuple[str, Usage | None]:
    """The first choice's text and the usage of a ``chat.completion`` body (empty when unreadable)."""
    try:
        completion = _completion.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", None
    return completion.text, completion.usage


def stream_piece(data: bytes) -> tuple[str, Usage | None]:
    """The text a ``chat.completion.chunk`` adds, and its usage (the last chunk's, when asked for)."""
    try:
        chunk = _chunk.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", None
    return chunk.text, chunk.usage
