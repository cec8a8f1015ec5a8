"""Models run in this process by llama.cpp (llama-cpp-python) from a GGUF file verified by hash.

Generation runs in a worker thread, one at a time per model (a llama.cpp context is not thread-safe).
Cancelling the caller stops the generation within one token: generation always streams internally, and
the thread checks a flag between tokens.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec

from schemas.status import ErrorCategory, ErrorInfo, ErrorType
from services.config import ModelConfig
from services.runtime.worker import ModelState
from workers.model.catalog import model_cache_dir, resolve_model_file, verify
from workers.model.providers.base import ChatCall, CheckFailed, Emit, ProviderError
from workers.model.providers.tool_calls import parse_tool_calls
from workers.model.providers.usage import usage_chunk

__all__ = ("LocalProvider", "llama_arguments")

LOADING = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.LOADING)
T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_PASSED = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
)


class _Cancelled(Exception):
    """Raised inside the generation thread to stop llama.cpp."""


def llama_arguments(body: Mapping[str, Any]) -> dict[str, Any]:
    """Map an OpenAI request onto ``Llama.create_chat_completion`` arguments (refusing what it can't do)."""
    if body.get("n", 1) != 1:
        raise ProviderError(
            400, "local models generate one choice: n must be 1", type_="invalid_request_error", param="n"
        )
    args: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
    args["messages"] = body["messages"]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        args["max_tokens"] = max_tokens
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            args["response_format"] = {"type": "json_object"}
        elif kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            args["response_format"] = {"type": "json_object", "schema": schema or {}}
        elif kind not in (None, "text"):
            raise ProviderError(
                400,
                f"unsupported response_format type {kind!r}",
                type_="invalid_request_error",
                param="response_format",
            )
    return args


class LocalProvider:
    """Loads the model once; it is ``ready`` only after a real one-token generation."""

    def __init__(self, model: ModelConfig, state: ModelState, *, environ: Mapping[str, str]) -> None:
        self.model = model
        self.state = state
        self._cache_dir = model_cache_dir(environ)
        self._llm: Any = None
        self._lock = threading.Lock()  # held by the thread that is generating
        self.limiter = anyio.CapacityLimiter(1)

    async def check(self) -> None:
        if self._llm is not None:
            return
        try:
            resolved = resolve_model_file(
                self.model.provider_model, sha256=self.model.params.sha256, cache_dir=self._cache_dir
            )
        except ValueError as exc:
            raise CheckFailed(LOADING, str(exc), retryable=False) from exc
        path = resolved.path
        if not path.is_file():
            raise CheckFailed(LOADING, f"model file {path} not found; run `modelbus models pull`")
        if resolved.sha256 and not await anyio.to_thread.run_sync(verify, path, resolved.sha256):
            raise CheckFailed(
                LOADING, f"model file {path} does not have sha256 {resolved.sha256}; pull it again"
            )
        self._llm = await anyio.to_thread.run_sync(self._load, str(path), limiter=self.limiter)

    def _load(self, path: str) -> Any:
        from llama_cpp import Llama

        params = self.model.params
        try:
            llm = Llama(model_path=path, n_ctx=params.n_ctx, n_threads=params.n_threads, verbose=False)
            llm.create_chat_completion(messages=[{"role": "user", "content": "ping"}], max_tokens=1)
        except (ValueError, RuntimeError, OSError) as exc:
            raise CheckFailed(LOADING, f"cannot load {path}: {exc}") from exc
        return llm

    async def _in_thread(self, work: Callable[[threading.Event], T]) -> T:
        """Run ``work`` in a thread; if the caller is cancelled the work is told to stop at once."""
        if self._llm is None:
            raise ProviderError(503, f"model {self.model.name} is not loaded", code="model_not_ready")
        cancel = threading.Event()

        def guarded() -> T:
            with self._lock:
                if cancel.is_set():
                    raise _Cancelled
                return work(cancel)

        try:
            return await anyio.to_thread.run_sync(guarded, abandon_on_cancel=True, limiter=self.limiter)
        finally:
            cancel.set()

    def _generate(self, call: ChatCall, cancel: threading.Event) -> Iterator[dict[str, Any]]:
        """The answer's chunks, one token each; stops at the next token once ``cancel`` is set.

        Generation always streams, even for a plain request: between two chunks is the one place a
        running llama.cpp generation can be stopped from Python (an exception raised in a logits
        processor is swallowed by its ctypes callback).
        """
        try:
            chunks: Iterator[dict[str, Any]] = self._llm.create_chat_completion(
                **llama_arguments(call.body), stream=True
            )
        except ValueError as exc:  # llama.cpp's way of saying "the prompt does not fit" and the like
            raise ProviderError(400, str(exc), type_="invalid_request_error") from exc
        try:
            for chunk in chunks:
                if cancel.is_set():
                    raise _Cancelled
                chunk["model"] = self.model.name
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        # the context holds the prompt and what was generated: the rest of it is the prompt
        prompt_tokens = max(0, int(self._llm.n_tokens) - completion_tokens)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def complete(self, call: ChatCall) -> bytes:
        def work(cancel: threading.Event) -> dict[str, Any]:
            parts: list[str] = []
            first: dict[str, Any] = {}
            finish = "stop"
            for chunk in self._generate(call, cancel):
                first = first or chunk
                for choice in chunk.get("choices", []):
                    if content := (choice.get("delta") or {}).get("content"):
                        parts.append(content)
                    finish = choice.get("finish_reason") or finish
            return {
                "id": first.get("id", f"chatcmpl-{uuid.uuid4().hex}"),
                "object": "chat.completion",
                "created": first.get("created", int(time.time())),
                "model": self.model.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "logprobs": None, "finish_reason": finish}],
                "usage": self._usage(len(parts)),
            }  # fmt: skip

        result = await self._in_thread(work)
        if call.body.get("tools"):
            for choice in result["choices"]:
                parse_tool_calls(choice)
        return _encoder.encode(result)

    async def stream(self, call: ChatCall, emit: Emit) -> None:
        if call.body.get("tools"):
            # tool calls are only known once the whole answer is there: generate, then stream it as deltas
            await self._stream_whole(call, emit)
            return

        def work(cancel: threading.Event) -> None:
            completion_tokens = 0
            last: dict[str, Any] = {}
            for chunk in self._generate(call, cancel):
                for choice in chunk.get("choices", []):
                    if (choice.get("delta") or {}).get("content"):
                        completion_tokens += 1
                last = chunk
                anyio.from_thread.run(emit, _encoder.encode(chunk))
            if call.include_usage:
                usage = self._usage(completion_tokens)
                anyio.from_thread.run(
                    emit, usage_chunk(str(last.get("id", "")), self.model.name, usage, last.get("created"))
                )

        await self._in_thread(work)

    async def _stream_whole(self, call: ChatCall, emit: Emit) -> None:
        result = msgspec.json.decode(await self.complete(call))
        chunk_id, created = (
            result.get("id", f"chatcmpl-{uuid.uuid4().hex}"),
            result.get("created", int(time.time())),
        )

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            return _encoder.encode(
                {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.model.name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
            )

        choice = result["choices"][0]
        message = choice.get("message", {})
        await emit(chunk({"role": "assistant", "content": ""}, None))
        if message.get("content"):
            await emit(chunk({"content": message["content"]}, None))
        for i, tool_call in enumerate(message.get("tool_calls") or []):
            await emit(chunk({"tool_calls": [{"index": i, **tool_call}]}, None))
        await emit(chunk({}, choice.get("finish_reason", "stop")))
        if call.include_usage and result.get("usage"):
            await emit(usage_chunk(chunk_id, self.model.name, result["usage"], created))

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return

        def close() -> None:
            with self._lock:  # a cancelled generation may still be stopping in its thread: wait for it
                llm.close()

        await anyio.to_thread.run_sync(close)
