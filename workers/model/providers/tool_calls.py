"""Tool calls from a local model's text: Qwen-style ``<tool_call>{json}</tool_call>`` blocks."""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

__all__ = ("parse_tool_calls",)

_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


class _Call(msgspec.Struct):
    name: str
    arguments: Any = None


def parse_tool_calls(choice: dict[str, Any]) -> None:
    """Turn tool-call blocks in ``choice.message.content`` into OpenAI ``tool_calls`` (in place)."""
    message = choice.get("message") or {}
    content = message.get("content") or ""
    calls = []
    for block in _BLOCK.findall(content):
        try:
            call = msgspec.json.decode(block, type=_Call)
        except msgspec.DecodeError:
            continue
        arguments = (
            call.arguments if isinstance(call.arguments, str) else msgspec.json.encode(call.arguments or {})
        )
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": arguments if isinstance(arguments, str) else arguments.decode(),
                },
            }
        )
    if calls:
        rest = _BLOCK.sub("", content).strip()
        message["content"] = rest or None
        message["tool_calls"] = calls
        choice["finish_reason"] = "tool_calls"
