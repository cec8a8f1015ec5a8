"""Tool calls for small local models, which llama-server's own parser does not always recognise.

Qwen-style models answer a tool call as ``<tool_call>{json}</tool_call>``, or, the small ones, as the bare
JSON object ``{"name": ..., "arguments": {...}}`` (sometimes in a Markdown fence), which llama-server leaves
in ``content``. Two steps make tools dependable on such a model:

- :func:`constrain_tool_choice`: when the client requires a call (``tool_choice: "required"`` or a named
  function), the answer is constrained by a JSON schema (llama.cpp's grammar) to exactly such an object for
  one of the offered functions, with its parameters' schema;
- :func:`parse_tool_calls`: an answer that is such an object for an offered function, or holds such blocks,
  becomes OpenAI ``tool_calls`` (``finish_reason: "tool_calls"``).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

__all__ = ("constrain_tool_choice", "offered_tools", "parse_tool_calls")

_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class _Call(msgspec.Struct):
    name: str
    arguments: Any = None


def offered_tools(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The request's function tools: name -> its ``parameters`` schema."""
    found: dict[str, dict[str, Any]] = {}
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            found[function["name"]] = parameters if isinstance(parameters, dict) else {"type": "object"}
    return found


def constrain_tool_choice(body: dict[str, Any]) -> dict[str, Any]:
    """The body to send: a required call becomes a JSON schema over the functions it may call."""
    tools = offered_tools(body)
    choice = body.get("tool_choice")
    if not tools or body.get("response_format") is not None:
        return body
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        tools = {name: tools[name]} if name in tools else tools
    elif choice != "required":
        return body
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
        }
        for name, parameters in tools.items()
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    constrained = {k: v for k, v in body.items() if k != "tool_choice"}
    constrained["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "tool_call", "schema": schema},
    }
    return constrained


def _decode(text: str, offered: dict[str, dict[str, Any]]) -> _Call | None:
    try:
        call = msgspec.json.decode(text, type=_Call)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return call if call.name in offered else None


def _calls_in(content: str, offered: dict[str, dict[str, Any]]) -> list[_Call]:
    blocks = [call for block in _BLOCK.findall(content) if (call := _decode(block, offered))]
    if blocks:
        return blocks
    text = content.strip()
    fenced = _FENCE.match(text)
    whole = _decode(fenced[1] if fenced else text, offered)
    return [whole] if whole is not None else []


def parse_tool_calls(choice: dict[str, Any], offered: dict[str, dict[str, Any]]) -> None:
    """Turn tool calls written in ``choice.message.content`` into OpenAI ``tool_calls`` (in place)."""
    message = choice.get("message") or {}
    if message.get("tool_calls") or not offered:
        return
    content = message.get("content") or ""
    calls = _calls_in(content, offered)
    if not calls:
        return
    message["tool_calls"] = [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": call.arguments
                if isinstance(call.arguments, str)
                else msgspec.json.encode(call.arguments or {}).decode(),
            },
        }
        for call in calls
    ]
    # what the model wrote around <tool_call> blocks stays; a bare call object was all of the content
    message["content"] = (_BLOCK.sub("", content).strip() or None) if _BLOCK.search(content) else None
    choice["finish_reason"] = "tool_calls"
