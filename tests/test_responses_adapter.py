"""The Responses API mapped onto chat completions and back (the one place it is done), both ways."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from modelbus.schemas.responses import ResponsesCall, ResponsesRequest, check_request, output_items
from modelbus.workers.model.responses import EventStream, chat_body, response_object

TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


def call(**fields: Any) -> ResponsesCall:
    request = msgspec.convert({"model": "m", **fields}, type=ResponsesRequest)
    items, _tools = check_request(request)
    return ResponsesCall(id="resp_" + "a" * 32, created_at=1, request=request, input=items)


def completion(content: str | None, tool_calls: list[dict[str, Any]] | None = None,
               finish: str = "stop") -> bytes:  # fmt: skip
    message = {"role": "assistant", "content": content, **({"tool_calls": tool_calls} if tool_calls else {})}
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return msgspec.json.encode({"choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})


def test_a_request_becomes_chat_messages_tools_and_formats() -> None:
    body = chat_body(call(
        instructions="Be brief.", tools=[TOOL], tool_choice={"type": "function", "name": "lookup"},
        max_output_tokens=20, text={"format": {"type": "json_object"}}, parallel_tool_calls=False,
        input=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Find "},
                                         {"type": "input_text", "text": "x"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "lookup", "arguments": "{\"q\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
        ],
    ))  # fmt: skip
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Find x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}},
        ]},  # parallel calls are one assistant message
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]  # fmt: skip
    assert body["tools"] == [
        {"type": "function", "function": {"name": "lookup", "parameters": TOOL["parameters"]}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert (body["max_tokens"], body["parallel_tool_calls"]) == (20, False)
    assert body["response_format"] == {"type": "json_object"}


def test_an_answer_becomes_output_items_and_continues_the_conversation() -> None:
    asked = call(input="Find x", tools=[TOOL])
    tool_call = {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    response = json.loads(response_object(asked, completion("Looking.", [tool_call])))
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][0]["content"][0]["text"] == "Looking."
    assert (response["output"][1]["call_id"], response["status"]) == ("call_9", "completed")
    assert response["usage"]["total_tokens"] == 10 and response["id"] == asked.id
    # the stored output, replayed as input, is what the model said, in chat's shape again
    history = [*asked.input, *output_items(response)]
    replay = chat_body(ResponsesCall(id=asked.id, created_at=1, request=asked.request, input=history))
    assert replay["messages"][1:] == [
        {"role": "assistant", "content": "Looking."},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
    ]
    cut = json.loads(response_object(asked, completion("Look", finish="length")))
    assert (cut["status"], cut["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})


def test_a_chunk_stream_becomes_numbered_events_and_the_same_response() -> None:
    asked = call(input="Hi")
    stream = EventStream(asked)
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}}]},
        {"choices": [{"delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "function": {"name": "lookup", "arguments": ""}}
        ]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4}},
    ]  # fmt: skip
    raw = [e for c in chunks for e in stream.chunk(msgspec.json.encode(c))]
    closing, final = stream.finish()
    events = [json.loads(e) for e in raw + closing]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_item.added",
        "response.function_call_arguments.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    response = json.loads(final)
    assert response == events[-1]["response"]
    assert response["output"][0]["content"][0]["text"] == "Hello"
    assert (response["output"][1]["name"], response["output"][1]["arguments"]) == ("lookup", "{}")
    assert response["usage"]["output_tokens"] == 4
