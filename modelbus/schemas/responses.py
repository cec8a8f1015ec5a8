"""OpenAI's Responses API (``POST /v1/responses``): the request modelbus accepts, its items, and what travels.

The request is validated here, strictly: a field modelbus does not honour is refused by name (400), never
dropped. ``input`` is a string or a list of items: messages (``input_text`` / ``output_text`` parts, or a
string), ``function_call`` and ``function_call_output``. Tools are function tools only.

A response is a chat job on its model's work queue (:data:`~modelbus.schemas.chat.CHAT`, ``api:
"responses"``): the ingress sends a :class:`ResponsesCall` as the job's body, with the conversation already
expanded from ``previous_response_id``; the model worker answers with the response object (a plain answer)
or the typed stream events (one event per chunk item), adapted from chat completions unless the model's
upstream speaks the Responses API itself. :class:`StoredResponse` is what ``store: true`` keeps in the
``modelbus_responses`` KV bucket.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = (
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputItem",
    "InputText",
    "MessageItem",
    "OutputText",
    "RequestProblem",
    "ResponsesCall",
    "ResponsesRequest",
    "StoredResponse",
    "check_request",
    "output_items",
    "parse_input",
    "parse_tools",
)


class InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class OutputText(msgspec.Struct, tag="output_text", tag_field="type"):
    text: str
    annotations: list[Any] = []


ContentPart = InputText | OutputText


class MessageItem(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(msgspec.Struct, tag="function_call", tag_field="type", kw_only=True):
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(msgspec.Struct, tag="function_call_output", tag_field="type", kw_only=True):
    call_id: str
    output: str
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class FunctionTool(msgspec.Struct, tag="function", tag_field="type", kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/responses``, as far as modelbus serves it."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None  # None: OpenAI's default, true
    stream: bool | None = None
    previous_response_id: str | None = None
    include: list[str] | None = None  # extra output to include: none is served, so only [] is accepted


class ResponsesCall(msgspec.Struct, frozen=True, kw_only=True):
    """What a ``responses`` chat job's body holds: the request, its response id, and the whole input."""

    id: str  # resp_...: the ingress's, so that it can store and find the response
    created_at: int
    request: ResponsesRequest  # as the client sent it (``input`` is the new part only)
    input: list[InputItem]  # the conversation: the previous responses' input and output, then this input


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One stored response: its owner (a hash of the API key, "" without auth), the response object, and
    the conversation that led to it (so ``previous_response_id`` continues it)."""

    owner: str
    response: msgspec.Raw
    input: list[InputItem]
    output: list[InputItem]


class RequestProblem(ValueError):
    """What is wrong with a request, naming the field (``param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


_items: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def parse_input(value: str | list[dict[str, Any]]) -> list[InputItem]:
    """``input`` as items: a string is one user message; an item without ``type`` but with a ``role`` is a
    message (OpenAI's "easy" form). Raises RequestProblem for an item modelbus does not serve."""
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    items: list[InputItem] = []
    for index, raw in enumerate(value):
        item = dict(raw)
        if "type" not in item and "role" in item:
            item["type"] = "message"
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            raise RequestProblem(
                f"input[{index}]: item type `{kind}` is not supported", f"input[{index}].type"
            )
        try:
            items.append(msgspec.convert(item, type=InputItem))
        except msgspec.ValidationError as exc:
            raise RequestProblem(f"input[{index}]: {exc}", f"input[{index}]") from exc
    return items


def parse_tools(tools: list[dict[str, Any]] | None) -> list[FunctionTool]:
    """Function tools only; any other (``web_search``, ``file_search``, ...) is named in the 400."""
    parsed: list[FunctionTool] = []
    for index, tool in enumerate(tools or ()):
        kind = tool.get("type")
        if kind != "function":
            raise RequestProblem(
                f"tools[{index}]: tool type `{kind}` is not supported (only `function` tools)",
                f"tools[{index}].type",
            )
        try:
            parsed.append(msgspec.convert(tool, type=FunctionTool))
        except msgspec.ValidationError as exc:
            raise RequestProblem(f"tools[{index}]: {exc}", f"tools[{index}]") from exc
    return parsed


def check_request(request: ResponsesRequest) -> tuple[list[InputItem], list[FunctionTool]]:
    """Everything the ingress refuses before queueing: the items, the tools, ``tool_choice`` and
    ``text.format``. Raises RequestProblem."""
    items = parse_input(request.input)
    tools = parse_tools(request.tools)
    if request.include:
        raise RequestProblem(f"include `{request.include[0]}` is not supported", "include")
    choice = request.tool_choice
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        raise RequestProblem(f"tool_choice `{choice}` is not supported", "tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise RequestProblem("tool_choice: only {type: function, name} is supported", "tool_choice")
        if choice["name"] not in {t.name for t in tools}:
            raise RequestProblem(
                f"tool_choice names `{choice['name']}`, which is not in tools", "tool_choice"
            )
    text_format = (request.text or {}).get("format")
    if request.text and set(request.text) - {"format"}:
        raise RequestProblem("text: only `format` is supported", "text")
    if text_format is not None:
        kind = text_format.get("type") if isinstance(text_format, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise RequestProblem(f"text.format type `{kind}` is not supported", "text.format")
        if kind == "json_schema" and not isinstance(text_format.get("schema"), dict):
            raise RequestProblem("text.format: a json_schema format needs `schema`", "text.format.schema")
    return items, tools


def output_items(response: dict[str, Any]) -> list[InputItem]:
    """A response's output as the input items that continue the conversation (``previous_response_id``)."""
    items: list[InputItem] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            text = "".join(
                p.get("text", "") for p in item.get("content") or [] if p.get("type") == "output_text"
            )
            items.append(MessageItem(role="assistant", content=[OutputText(text=text)]))
        elif item.get("type") == "function_call":
            items.append(
                FunctionCallItem(call_id=item["call_id"], name=item["name"], arguments=item["arguments"])
            )
    return items
