"""A stand-in for a remote OpenAI-compatible provider, speaking the real wire format (JSON and SSE).

It is the one stand-in the project allows: remote providers cannot be reached from these machines. Tests
change its behaviour through :class:`Behaviour` (in-process) or ``POST /_control`` (from another process):
fail with a status, delay, answer with given text (or given texts in turn), stream in chunks at a given
pace, call a tool, refuse a prompt longer than its context, fail in the middle of a stream. Errors come in
OpenAI's format or in llama.cpp's llama-server's (``wire``). It records every chat request with when it
started and ended, and whether the client hung up.
Run it alone with ``python -m tests.support.upstream --port N``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
# llama-server's format_error_response: its error type for each status it answers with
_LLAMA_SERVER_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
_encoder = msgspec.json.Encoder()


class Behaviour(msgspec.Struct, kw_only=True):
    fail_status: int | None = None
    fail_message: str = "stand-in failure"
    delay_s: float = 0.0  # before the response (or the first chunk)
    reply: str = "Hello from the stand-in."
    replies: list[str] = []  # when set: the answers to successive chat requests, then the last repeats
    chunks: int = 0  # 0: one chunk per word
    chunk_delay_s: float = 0.0
    send_usage: bool = True  # include the usage chunk when asked (False: leave it to modelbus)
    api_key: str | None = None  # when set, any other bearer token gets a 401
    wire: Literal["openai", "llama-server"] = "openai"  # whose error format failures are in
    context_tokens: int | None = None  # the context size: a longer prompt (in words) is refused with a 400
    stream_error_after: int | None = None  # streams: fail (500) after this many content chunks, in the stream
    error_events: bool = False  # stream errors as older llama-server builds sent them: an `error:` event in
    # a 200 stream (then `data: [DONE]`), even before the first chunk
    tool_name: str | None = None  # the tool a call is made to (default: the first one offered)
    tool_arguments: str = '{"city": "Paris"}'  # `{turn}` in it becomes the call's number (1, 2, ...)
    tool_turns: int = 1  # consecutive tool results after which the stand-in answers instead of calling
    echo_tool_result: bool = False  # answer with the content of the last tool message


class Seen(msgspec.Struct, kw_only=True):
    body: dict[str, Any]
    started: float
    ended: float = 0.0
    disconnected: bool = False


class Upstream:
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.requests: list[Seen] = []

    @property
    def behaviour(self) -> Behaviour:
        return self._behaviour

    @behaviour.setter
    def behaviour(self, behaviour: Behaviour) -> None:
        """A new behaviour starts its ``replies`` from the first."""
        self._behaviour = behaviour
        self._served = 0

    def _reply_text(self, b: Behaviour) -> str:
        if not b.replies:
            return b.reply
        text = b.replies[min(self._served, len(b.replies) - 1)]
        self._served += 1
        return text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if path == "/_control" and method == "POST":
            self.behaviour = msgspec.json.decode(body, type=Behaviour)
            await _json(send, 200, {"ok": True})
            return
        if path == "/_requests":
            await _json(send, 200, self.requests)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        b = self.behaviour
        if b.api_key is not None and headers.get("authorization") != f"Bearer {b.api_key}":
            await _error(send, 401, "Incorrect API key provided", b.wire)
            return
        if path.endswith("/chat/completions") and method == "POST":
            seen = Seen(body=msgspec.json.decode(body), started=time.time())
            self.requests.append(seen)
            problem = _invalid_tools(seen.body)
            if problem is not None:  # as OpenAI does, instead of failing on it later
                await _error(send, 400, problem)
                seen.ended = time.time()
                return
            try:
                await self._chat(seen, b, receive, send)
            except OSError:
                seen.disconnected = True
            finally:
                seen.ended = time.time()
            return
        if path.endswith("/responses") and method == "POST":  # OpenAI's Responses API, served natively
            seen = Seen(body=msgspec.json.decode(body), started=time.time())
            self.requests.append(seen)
            await _responses(seen.body, b, self._reply_text(b), send)
            seen.ended = time.time()
            return
        if path.endswith("/embeddings") and method == "POST":
            seen = Seen(body=msgspec.json.decode(body), started=time.time())
            self.requests.append(seen)
            if b.fail_status is not None:
                await _error(send, b.fail_status, b.fail_message, b.wire)
            else:
                await _json(send, 200, _embeddings(seen.body))
            seen.ended = time.time()
            return
        if path.endswith("/models") and method == "GET":
            await _json(send, 200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})
            return
        await _error(send, 404, f"no route {method} {path}")

    async def _chat(self, seen: Seen, b: Behaviour, receive: Receive, send: Send) -> None:
        answered = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                # after the whole answer is sent, uvicorn reports a disconnect too: that is no hang-up
                if (await receive())["type"] == "http.disconnect" and not answered:
                    seen.disconnected = True
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            if b.delay_s:
                await anyio.sleep(b.delay_s)
            prompt = prompt_tokens(seen.body)
            if b.fail_status is not None:
                await _error(send, b.fail_status, b.fail_message, b.wire)
            elif b.context_tokens is not None and prompt > b.context_tokens:
                error = _context_error(b.wire, prompt, b.context_tokens)
                if seen.body.get("stream") and b.error_events:
                    await _start_stream(send)
                    await _stream_error(send, error, events=True)
                else:
                    await _json(send, 400, {"error": error})
            elif seen.body.get("stream"):
                await _stream(seen.body, b, self._reply_text(b), send)
            else:
                await _json(send, 200, _completion(seen.body, self._reply_text(b), b))
            answered = True
            tg.cancel_scope.cancel()


def _invalid_tools(request: dict[str, Any]) -> str | None:
    """What OpenAI would reject in ``tools`` (each needs a ``function`` with a string ``name``), if any."""
    for i, tool in enumerate(request.get("tools") or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f"Missing required parameter: 'tools[{i}].function.name'."
    return None


def _tool_call(request: dict[str, Any], b: Behaviour) -> dict[str, Any] | None:
    """The stand-in calls a tool (``tool_name``, else the first), unless told not to or it has been given
    the results of ``tool_turns`` of its own calls in a row."""
    tools = request.get("tools") or []
    messages = request.get("messages") or []
    names = [t["function"]["name"] for t in tools]
    results = 0  # the results of the stand-in's own calls since the last user message
    for message in reversed(messages):
        if message.get("role") not in ("tool", "assistant"):
            break
        results += message.get("role") == "tool" and str(message.get("tool_call_id")).startswith(
            "call_standin"
        )
    if not tools or request.get("tool_choice") == "none" or results >= b.tool_turns:
        return None
    name = b.tool_name if b.tool_name in names else names[0]
    return {
        "id": f"call_standin{results + 1}",
        "type": "function",
        "function": {"name": name, "arguments": b.tool_arguments.replace("{turn}", str(results + 1))},
    }


def prompt_tokens(request: dict[str, Any]) -> int:
    """The stand-in's tokens are words."""
    return sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))


def _context_error(wire: str, prompt: int, n_ctx: int) -> dict[str, Any]:
    """The error object each server answers a prompt longer than its context with (HTTP 400)."""
    if wire == "llama-server":
        return {
            "code": 400,
            "message": f"request ({prompt} tokens) exceeds the available context size ({n_ctx} tokens), "
            "try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": prompt,
            "n_ctx": n_ctx,
        }
    return {
        "message": f"This model's maximum context length is {n_ctx} tokens. However, your messages resulted "
        f"in {prompt} tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


def _usage(request: dict[str, Any], completion: int) -> dict[str, int]:
    prompt = prompt_tokens(request)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(request: dict[str, Any], text: str, b: Behaviour) -> dict[str, Any]:
    call = _tool_call(request, b)
    messages = request.get("messages") or []
    if b.echo_tool_result and messages and messages[-1].get("role") == "tool":
        text = str(messages[-1].get("content"))
    message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
    if call:
        message["tool_calls"] = [call]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "stand-in"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if call else "stop",
            }
        ],
        "usage": _usage(request, len(text.split())),
    }


async def _start_stream(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )


async def _stream_error(send: Send, error: dict[str, Any], *, events: bool) -> None:
    """An error inside a 200 stream, ending it: llama-server's ``data: {"error": ...}`` (no ``[DONE]``), or
    with ``events`` the ``error: {...}`` event of its older builds, followed by ``data: [DONE]``."""
    if events:
        body = b"error: " + _encoder.encode(error) + b"\n\ndata: [DONE]\n\n"
    else:
        body = b"data: " + _encoder.encode({"error": error}) + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _stream(request: dict[str, Any], b: Behaviour, reply: str, send: Send) -> None:
    await _start_stream(send)
    chunk_id, created, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time()), request.get("model", "")

    async def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
        chunk = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + _encoder.encode(chunk) + b"\n\n",
                "more_body": True,
            }
        )

    await event({"role": "assistant", "content": ""})
    call = _tool_call(request, b)
    pieces: list[str] = []
    if call:
        await event(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        )
        await event({"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]})
    else:
        words = reply.split(" ")
        n = b.chunks or len(words)
        pieces = [" ".join(words[i * len(words) // n : (i + 1) * len(words) // n]) for i in range(n)]
        for i, piece in enumerate(pieces):
            if i == b.stream_error_after:
                await _stream_error(send, _error_object(b.wire, 500, b.fail_message), events=b.error_events)
                return
            if b.chunk_delay_s:
                await anyio.sleep(b.chunk_delay_s)
            await event({"content": piece if i == 0 else " " + piece})
    await event({}, "tool_calls" if call else "stop")
    if (request.get("stream_options") or {}).get("include_usage") and b.send_usage:
        usage_chunk = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(request, len(pieces)),
        }
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + _encoder.encode(usage_chunk) + b"\n\n",
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


EMBEDDING_DIMENSIONS = 8


def embedding_of(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The stand-in's vector for ``text``: deterministic, from its hash (not meaningful)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128, 6) for i in range(dimensions)]


def _embeddings(request: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``/embeddings`` answer, one vector per input (a token array is embedded as its digits)."""
    inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
    dimensions = request.get("dimensions") or EMBEDDING_DIMENSIONS
    texts = [i if isinstance(i, str) else " ".join(map(str, i)) for i in inputs]
    data = [
        {"object": "embedding", "index": n, "embedding": embedding_of(t, dimensions)}
        for n, t in enumerate(texts)
    ]
    tokens = sum(len(t.split()) for t in texts)
    return {"object": "list", "data": data, "model": request.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _response(request: dict[str, Any], text: str, status: str) -> dict[str, Any]:
    """An OpenAI ``response`` object whose output is one message of ``text``."""
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": f"resp_upstream{uuid.uuid4().hex[:12]}", "object": "response", "created_at": int(time.time()),
        "status": status, "model": request.get("model", "stand-in"), "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
        "output": [] if status != "completed" else [
            {"type": "message", "id": "msg_upstream1", "status": "completed", "role": "assistant",
             "content": content}
        ],
        "usage": None if status != "completed" else {
            "input_tokens": 3, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(text.split()), "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 3 + len(text.split()),
        },
    }  # fmt: skip


async def _responses(request: dict[str, Any], b: Behaviour, text: str, send: Send) -> None:
    """``POST /responses``: the response object, or with ``stream`` its typed events."""
    if b.fail_status is not None:
        await _error(send, b.fail_status, b.fail_message)
        return
    if not request.get("stream"):
        await _json(send, 200, _response(request, text, "completed"))
        return
    await _start_stream(send)
    seq = 0

    async def event(kind: str, **fields: Any) -> None:
        nonlocal seq
        data = _encoder.encode({"type": kind, "sequence_number": seq, **fields})
        seq += 1
        message = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        await send({"type": "http.response.body", "body": message, "more_body": True})

    await event("response.created", response=_response(request, text, "in_progress"))
    item = {
        "type": "message",
        "id": "msg_upstream1",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    await event("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    await event(
        "response.content_part.added", item_id="msg_upstream1", output_index=0, content_index=0, part=part
    )
    for i, word in enumerate(text.split(" ")):
        await event("response.output_text.delta", item_id="msg_upstream1", output_index=0, content_index=0,
                    delta=word if i == 0 else " " + word, logprobs=[])  # fmt: skip
    await event("response.output_text.done", item_id="msg_upstream1", output_index=0, content_index=0,
                text=text, logprobs=[])  # fmt: skip
    done = _response(request, text, "completed")
    await event("response.output_item.done", output_index=0, item=done["output"][0])
    await event("response.completed", response=done)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, payload: object) -> None:
    data = _encoder.encode(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _error_object(wire: str, status: int, message: str) -> dict[str, Any]:
    if wire == "llama-server":  # its code is the HTTP status, an integer
        return {"code": status, "message": message, "type": _LLAMA_SERVER_TYPES.get(status, "server_error")}
    type_, code = _ERROR_TYPES.get(status, ("server_error", None))
    return {"message": message, "type": type_, "param": None, "code": code}


async def _error(send: Send, status: int, message: str, wire: str = "openai") -> None:
    await _json(send, status, {"error": _error_object(wire, status, message)})


class UpstreamServer:
    """Serve an :class:`Upstream` with uvicorn on a free loopback port while entered."""

    def __init__(self, upstream: Upstream | None = None, port: int = 0) -> None:
        self.upstream = upstream or Upstream()
        self._config = uvicorn.Config(
            self.upstream,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            access_log=False,
            log_config=None,
            http="httptools",
        )
        self._server = uvicorn.Server(self._config)
        self._tg: anyio.abc.TaskGroup | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> UpstreamServer:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._server.serve)
        while not self._server.started:
            await anyio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvicorn.run(
        Upstream(),
        host="127.0.0.1",
        port=args.port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        http="httptools",
    )


if __name__ == "__main__":
    main()
