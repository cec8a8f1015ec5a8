"""Runtime tools on the bus: a model worker's tool loop asks an NSQL worker to run one call of one tool.

A model with ``params.tools`` is offered :data:`TOOL_FUNCTIONS` (OpenAI function definitions: the contract
between the model, which writes the arguments, and the NSQL worker, which reads them). Each call the model
makes becomes a :class:`ToolRequest` on ``modelbus.v1.tool``, answered by one NSQL worker with one
:class:`ToolResult`: the text the model reads next (JSON), or, when the call could not run (bad arguments,
SQL the guard refused, a dataset the model may not read), ``is_error`` and why, which the model reads too
so it can try again. A :class:`ToolFailure` is the bus's own failure (a worker that stopped, the deadline).
Results are whole when sent (:attr:`~modelbus.schemas.jobs.CommitPoint.RESULT`).
"""

from __future__ import annotations

from typing import Any

from modelbus.schemas.jobs import CommitPoint, JobKind, JobReply, JobRequest
from modelbus.schemas.subjects import TOOL_SUBJECT, TOOLS_STREAM

__all__ = (
    "MAX_SAMPLE_ROWS",
    "TOOL",
    "TOOL_FUNCTIONS",
    "ToolFailure",
    "ToolReply",
    "ToolRequest",
    "ToolResult",
    "tool_definitions",
)

MAX_SAMPLE_ROWS = 100  # rows sample_data returns at most
_TABLE = {"type": "string", "description": "A dataset name, as list_datasets gives it"}
_QUESTION = {"type": "string", "description": "The question, in plain language"}
TOOL_FUNCTIONS: dict[str, dict[str, Any]] = {
    "list_datasets": {
        "description": "List the datasets (SQL tables) you may query, with their descriptions.",
        "parameters": {"type": "object", "properties": {}},
    },
    "table_schema": {
        "description": "The columns (name and ClickHouse type) of one or more datasets.",
        "parameters": {
            "type": "object",
            "properties": {"tables": {"type": "array", "items": _TABLE, "minItems": 1}},
            "required": ["tables"],
        },
    },
    "sample_data": {
        "description": "A few rows of a dataset, to see what its values look like.",
        "parameters": {
            "type": "object",
            "properties": {
                "dataset": _TABLE,
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLE_ROWS, "default": 3},
            },
            "required": ["dataset"],
        },
    },
    "sql": {
        "description": "Run one read-only ClickHouse SQL query over the datasets (they are its tables) and "
        "get its rows as JSON.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "One SELECT statement"}},
            "required": ["query"],
        },
    },
    "nsql": {
        "description": "Ask a question about the datasets in plain language; it is turned into SQL and run, "
        "and you get the SQL and the rows.",
        "parameters": {"type": "object", "properties": {"query": _QUESTION}, "required": ["query"]},
    },
}


def tool_definitions(names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The OpenAI ``tools`` entries for ``names``."""
    return [{"type": "function", "function": {"name": n, **TOOL_FUNCTIONS[n]}} for n in names]


class ToolRequest(JobRequest, frozen=True, kw_only=True, tag="modelbus.v1.tool_request"):
    tool: str
    arguments: str  # JSON text, as the model wrote it
    model: str  # the model that called it (its allowlist is ``datasets``; ``nsql`` asks it for the SQL)
    datasets: tuple[str, ...] = ()  # the datasets the call may read; empty: every one the worker has


class ToolResult(JobReply, frozen=True, kw_only=True, tag="modelbus.v1.tool_result"):
    content: str  # what the model reads next: JSON, or why the call could not run
    is_error: bool = False
    rows: int | None = None  # rows in the result, when the tool ran SQL


class ToolFailure(JobReply, frozen=True, kw_only=True, tag="modelbus.v1.tool_failure"):
    status: int
    message: str
    code: str | None = None
    error_type: str = "server_error"
    param: str | None = None


ToolReply = ToolResult | ToolFailure


TOOL: JobKind[ToolRequest, ToolReply] = JobKind(
    name="tool",
    stream=TOOLS_STREAM,
    wildcard=TOOL_SUBJECT,
    subject=lambda _queue: TOOL_SUBJECT,
    durable=lambda _queue: "tool",
    request=ToolRequest,
    replies=ToolReply,
    commit=CommitPoint.RESULT,
    failure=ToolFailure,
    worker="NSQL worker",
    label=lambda _queue: "tool",
    task="tool_call",
)
