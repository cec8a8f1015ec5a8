"""A stand-in OpenAI-compatible upstream for benchmarks, written so that it is never the bottleneck.

The test stand-in (``tests/support/upstream.py``, an ASGI app under uvicorn) can fail, delay, call tools and
record what it saw, and tops out near 3,000 chat requests/s on two cores: a gateway benchmark against it
measures the stand-in. This one is a bare asyncio protocol under uvloop that answers the same wire format
(``GET /v1/models``, ``POST /v1/chat/completions`` as JSON or as server-sent events, with usage when asked),
builds each answer from prepared bytes, and does nothing else. Each stream event is written on its own, as
a provider writes tokens as they come. Run it alone with ``python -m tests.bench.fast_upstream --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

import msgspec
import uvloop

__all__ = ("serve",)

_encoder = msgspec.json.Encoder()


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Chat(msgspec.Struct):
    """The fields of a chat request this stand-in reads (the rest is skipped by the decoder)."""

    model: str = ""
    stream: bool = False
    stream_options: _StreamOptions | None = None


_decode_chat = msgspec.json.Decoder(_Chat).decode


class Answers:
    """What every request is answered with: ``words`` words, in ``chunks`` stream events."""

    def __init__(self, words: int, chunks: int) -> None:
        text = " ".join(["word"] * words).split(" ")
        self.pieces = [
            " ".join(text[i * len(text) // chunks : (i + 1) * len(text) // chunks]) for i in range(chunks)
        ]
        self.pieces = [p if i == 0 else " " + p for i, p in enumerate(self.pieces)]
        self.text = "".join(self.pieces)
        self.completion_tokens = len(text)
        self.served = 0
        self.models = _response(
            200, b"application/json",
            _encoder.encode({"object": "list", "data": [{"id": "stand-in", "object": "model"}]}),
        )  # fmt: skip

    def usage(self, body: bytes) -> bytes:
        prompt = max(1, len(body) // 4)  # about a token per four bytes, as tokenizers average on English
        completion = self.completion_tokens
        return b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
            prompt, completion, prompt + completion,
        )  # fmt: skip

    def _head(self, request: _Chat, kind: bytes) -> bytes:
        """The fields every object starts with; ids count up (as unique as a provider's, much cheaper)."""
        self.served += 1
        model = _encoder.encode(request.model or "stand-in")
        return b'"id":"chatcmpl-%012x","object":"%s","created":%d,"model":%s' % (
            self.served, kind, int(time.time()), model,
        )  # fmt: skip

    def completion(self, request: _Chat, body: bytes) -> bytes:
        message = _encoder.encode({"role": "assistant", "content": self.text})
        choice = b'{"index":0,"message":%s,"logprobs":null,"finish_reason":"stop"}' % message
        payload = b'{%s,"choices":[%s],"usage":%s}' % (
            self._head(request, b"chat.completion"), choice, self.usage(body),
        )  # fmt: skip
        return _response(200, b"application/json", payload)

    def events(self, request: _Chat, body: bytes) -> list[bytes]:
        """The stream's chunks of chunked transfer encoding, one per event, the terminator last."""
        head = self._head(request, b"chat.completion.chunk")

        def event(delta: object, finish: bytes = b"null") -> bytes:
            return b'{%s,"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}' % (
                head, _encoder.encode(delta), finish,
            )  # fmt: skip

        payloads = [event({"role": "assistant", "content": ""})]
        payloads += [event({"content": piece}) for piece in self.pieces]
        payloads.append(event({}, b'"stop"'))
        if request.stream_options is not None and request.stream_options.include_usage:
            payloads.append(b'{%s,"choices":[],"usage":%s}' % (head, self.usage(body)))
        chunks = [_chunk(b"data: " + p + b"\n\n") for p in payloads]
        chunks.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return chunks


def _response(status: int, content_type: bytes, body: bytes) -> bytes:
    reason = b"OK" if status == 200 else b"Not Found"
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, reason, content_type, len(body))
        + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND = _response(
    404, b"application/json",
    _encoder.encode({"error": {"message": "no such route", "type": "invalid_request_error", "code": None}}),
)  # fmt: skip


class _Connection(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: list[bytes] = []  # events of the stream being written, one per loop turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self._serve()

    def _serve(self) -> None:
        assert self.transport is not None
        while not self.streaming:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length = 0
            marker = head.lower().find(b"content-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : stop if stop > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"POST" and path.endswith(b"/chat/completions"):
                try:
                    request = _decode_chat(body)
                except msgspec.DecodeError:
                    self.transport.write(_NOT_FOUND)
                    continue
                if request.stream:
                    self.transport.write(_STREAM_HEAD)
                    self.streaming = self.answers.events(request, body)
                    asyncio.get_running_loop().call_soon(self._next_event)
                else:
                    self.transport.write(self.answers.completion(request, body))
            elif method == b"GET" and path.endswith(b"/models"):
                self.transport.write(self.answers.models)
            else:
                self.transport.write(_NOT_FOUND)

    def _next_event(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self.streaming = []
            return
        self.transport.write(self.streaming.pop(0))
        if self.streaming:
            asyncio.get_running_loop().call_soon(self._next_event)
        else:
            self._serve()  # a request that came while streaming (HTTP/1.1 pipelining)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, *, words: int = 20, chunks: int = 20, ready: asyncio.Event | None = None) -> None:
    """Answer on 127.0.0.1:``port`` until cancelled."""
    loop = asyncio.get_running_loop()
    answers = Answers(words, chunks)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(lambda: _Connection(answers), sock=sock, backlog=2048)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--words", type=int, default=20, help="words in every answer")
    parser.add_argument("--chunks", type=int, default=20, help="content events in every stream")
    args = parser.parse_args()
    uvloop.run(serve(args.port, words=args.words, chunks=args.chunks))
