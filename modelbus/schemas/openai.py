"""OpenAI's chat completions: the request as modelbus validates it, and the answer as far as it reads it.

Clients send OpenAI's request format; modelbus checks the fields it relies on (and their types) and passes
the JSON through untouched, so fields added by OpenAI later still reach providers that know them. Answers
pass through untouched too; :class:`ChatCompletion` and :class:`ChatCompletionChunk` read the text and the
usage out of them (for the task history, the metrics, and the NSQL worker's SQL).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = (
    "DEFAULTABLE_FIELDS",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "StreamOptions",
    "Usage",
    "error_body",
)

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Annotated[str, msgspec.Meta(min_length=1)] | None = None  # minimal, low, medium, ...
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    verbosity: str | None = None


# the request fields a model's configured defaults may set (Spice's ``params.openai_<field>``): every field
# above but the conversation itself
DEFAULTABLE_FIELDS: frozenset[str] = frozenset(
    f.encode_name for f in msgspec.structs.fields(ChatCompletionRequest)
) - {"model", "messages", "stream"}


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _AnswerMessage(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _AnswerMessage | None = None


class ChatCompletion(msgspec.Struct):
    """A ``chat.completion`` object, read for its first choice's text and its usage."""

    choices: list[_Choice] = []
    usage: Usage | None = None

    @property
    def text(self) -> str:
        message = self.choices[0].message if self.choices else None
        return (message.content or "") if message else ""


class _Delta(msgspec.Struct):
    content: str | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta | None = None


class ChatCompletionChunk(msgspec.Struct):
    """A ``chat.completion.chunk`` object, read for the text it adds and its usage (the last chunk's)."""

    choices: list[_ChunkChoice] = []
    usage: Usage | None = None

    @property
    def text(self) -> str:
        delta = self.choices[0].delta if self.choices else None
        return (delta.content or "") if delta else ""


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "code", "param"}}``."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}
