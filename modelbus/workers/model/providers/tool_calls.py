"""Tool calls for small local models, which llama-server's own parser does not always recognise.

Qwen-style models answer a tool call as ``<tool_call>{json}</tool_call>``, or, the small ones, as the bare
JSON object ``{"name": ..., "arguments": {...}}`` (sometimes in a Markdown fence, sometimes fenced after a
sentence saying what it will do), which llama-server leaves in ``content``. Two steps make tools dependable
on such a model:

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
_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)  # a fenced object anywhere in the text


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


def _calls_in(content: str, offered: dict[str, dict[str, Any]]) -> tuple[list[_Call], str | None]:
    """The calls written in ``content``, and what the model wrote around them (None when nothing)."""
    blocks = [call for block in _BLOCK.findall(content) if (call := _decode(block, offered))]
    if blocks:
        return blocks, _BLOCK.sub("", content).strip() or None
    text = content.strip()
    fenced = _FENCE.match(text)
    whole = _decode(fenced[1] if fenced else text, offered)
    if whole is not None:
        return [whole], None
    inline = [call for block in _FENCED.findall(content) if (call := _decode(block, offered))]
    return inline, _FENCED.sub("", content).strip() or None


def parse_tool_calls(choice: dict[str, Any], offered: dict[str, dict[str, Any]]) -> None:
    """Turn tool calls written in ``choice.message.content`` into OpenAI ``tool_calls`` (in place)."""
    message = choice.get("message") or {}
    if message.get("tool_calls") or not offered:
        return
    calls, rest = _calls_in(message.get("content") or "", offered)
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
    message["content"] = rest
    choice["finish_reason"] = "tool_calls"
