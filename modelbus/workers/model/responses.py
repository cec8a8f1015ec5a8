"""OpenAI's Responses API on a chat-completions backend: the one place the two are mapped, both ways.

- :func:`chat_body`: a :class:`~modelbus.schemas.responses.ResponsesCall` as a chat completion request
  (``instructions`` a system message first; message items as messages; a ``function_call`` an assistant
  message's tool call; a ``function_call_output`` a ``tool`` message; function tools, ``tool_choice``,
  ``max_output_tokens``, ``text.format`` as ``response_format``: a ``json_schema`` is enforced as chat's is);
- :func:`response_object`: a ``chat.completion`` as the response object (a ``message`` item with its
  ``output_text``, a ``function_call`` item per tool call, the usage, ``incomplete`` when it hit the token
  limit);
- :class:`EventStream`: ``chat.completion.chunk`` objects as the Responses API's typed events, in order,
  numbered by ``sequence_number``.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

from modelbus.schemas.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ResponsesCall,
    ResponsesRequest,
    parse_tools,
)

__all__ = ("EventStream", "chat_body", "response_object")

_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _messages(call: ResponsesCall) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if call.request.instructions:
        messages.append({"role": "system", "content": call.request.instructions})
    for item in call.input:
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            tool_call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(tool_call)  # parallel calls: one assistant message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


def chat_body(call: ResponsesCall) -> dict[str, Any]:
    """The chat completion request that answers ``call``."""
    request = call.request
    body: dict[str, Any] = {"model": request.model, "messages": _messages(call)}
    tools = parse_tools(request.tools)
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                        "strict": t.strict,
                    }.items()
                    if v is not None
                },
            }
            for t in tools
        ]
    choice = request.tool_choice
    if isinstance(choice, dict):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        body["tool_choice"] = choice
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("max_output_tokens", "max_tokens"),
    ):
        value = getattr(request, source)
        if value is not None:
            body[target] = value
    text_format = (request.text or {}).get("format")
    if isinstance(text_format, dict):
        if text_format.get("type") == "json_schema":
            schema = {"name": text_format.get("name") or "output", "schema": text_format["schema"]}
            if text_format.get("strict") is not None:
                schema["strict"] = text_format["strict"]
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif text_format.get("type") == "json_object":
            body["response_format"] = {"type": "json_object"}
    return body


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _request_echo(request: ResponsesRequest) -> dict[str, Any]:
    """The request's own fields a response object repeats."""
    return {
        "instructions": request.instructions,
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls
        if request.parallel_tool_calls is not None
        else True,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_output_tokens,
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": request.tools or [],
        "text": request.text or {"format": {"type": "text"}},
        "previous_response_id": request.previous_response_id,
        "store": request.store if request.store is not None else True,
        "user": request.user,
    }


def base_response(call: ResponsesCall, *, status: str) -> dict[str, Any]:
    return {
        "id": call.id,
        "object": "response",
        "created_at": call.created_at,
        "status": status,
        "model": call.request.model,
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
        **_request_echo(call.request),
    }


def _message_item(text: str, *, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or _id("msg"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(
    call_id: str, name: str, arguments: str, *, status: str = "completed", item_id: str | None = None
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id or _id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_object(call: ResponsesCall, completion: bytes) -> bytes:
    """The response object for a ``chat.completion`` answer."""
    data = _decode(completion)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("content"):
        output.append(_message_item(message["content"]))
    for tool_call in message.get("tool_calls") or []:
        function = tool_call.get("function") or {}
        output.append(
            _call_item(
                tool_call.get("id") or _id("call"), function.get("name", ""), function.get("arguments", "")
            )
        )
    response = base_response(call, status="completed")
    response["output"] = output
    response["usage"] = _usage(data.get("usage"))
    if choice.get("finish_reason") == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    return msgspec.json.encode(response)


class EventStream:
    """Chat completion chunks in, the Responses API's stream events out (``sequence_number`` from 0)."""

    def __init__(self, call: ResponsesCall) -> None:
        self.call = call
        self._seq = 0
        self._text: list[str] = []
        self._message_id: str | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # the chat tool call index -> its function_call item
        self._outputs: list[dict[str, Any]] = []  # items in output order (message or function_call)
        self._usage: dict[str, Any] | None = None
        self._finish: str | None = None
        self._started = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return msgspec.json.encode(event)

    def _start(self) -> list[bytes]:
        """``response.created`` and ``.in_progress``: sent with the first content (or at the end), so that
        a failure before any output is a plain error the client can retry."""
        if self._started:
            return []
        self._started = True
        response = base_response(self.call, status="in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def chunk(self, data: bytes) -> list[bytes]:
        chunk = _decode(data)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[bytes] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._start() + self._text_delta(delta["content"])
            for tool_call in delta.get("tool_calls") or []:
                events += self._start() + self._call_delta(tool_call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def _text_delta(self, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self._message_id is None:
            self._message_id = _id("msg")
            item = _message_item("", status="in_progress", item_id=self._message_id)
            item["content"] = []
            self._outputs.append(item)
            index = len(self._outputs) - 1
            events.append(self._event("response.output_item.added", output_index=index, item=item))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._message_id,
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        self._text.append(text)
        index = self._index_of(self._message_id)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._message_id,
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _index_of(self, item_id: str) -> int:
        return next(i for i, item in enumerate(self._outputs) if item["id"] == item_id)

    def _call_delta(self, tool_call: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        index = int(tool_call.get("index") or 0)
        function = tool_call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            item = _call_item(
                tool_call.get("id") or _id("call"), function.get("name") or "", "", status="in_progress"
            )
            self._calls[index] = item
            self._outputs.append(item)
            events.append(
                self._event(
                    "response.output_item.added", output_index=len(self._outputs) - 1, item=dict(item)
                )
            )
        elif function.get("name"):
            item["name"] += function["name"]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._index_of(item["id"]),
                    delta=function["arguments"],
                )
            )
        return events

    def finish(self) -> tuple[list[bytes], bytes]:
        """The closing events, and the final response object."""
        events: list[bytes] = self._start()
        for index, item in enumerate(self._outputs):
            if item["type"] == "message":
                text = "".join(self._text)
                events.append(
                    self._event(
                        "response.output_text.done",
                        item_id=item["id"],
                        output_index=index,
                        content_index=0,
                        text=text,
                        logprobs=[],
                    )
                )
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                events.append(
                    self._event(
                        "response.content_part.done",
                        item_id=item["id"],
                        output_index=index,
                        content_index=0,
                        part=part,
                    )
                )
                item["content"] = [part]
            else:
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        arguments=item["arguments"],
                    )
                )
            item["status"] = "completed"
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        response = base_response(self.call, status="completed")
        response["output"] = self._outputs
        response["usage"] = _usage(self._usage)
        kind = "response.completed"
        if self._finish == "length":
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
            kind = "response.incomplete"
        events.append(self._event(kind, response=response))
        return events, msgspec.json.encode(response)
