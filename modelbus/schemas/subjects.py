"""Subject, stream and bucket names, and the model-id encoding that makes any id a safe subject token.

A model id such as ``qwen2.5-coder`` contains a dot, which NATS reads as a token separator. Every id is
encoded before it becomes a subject token or a KV key: ASCII letters, digits and ``-`` pass through, every
other byte of its UTF-8 form becomes ``_XX`` (two upper-case hex digits). The encoding is injective, so no id
can reach another model's subject, and it only produces characters valid in subjects, KV keys and stream or
consumer names.
"""

from __future__ import annotations

import re

__all__ = (
    "CANCEL_WILDCARD",
    "CHAT_STREAM",
    "EMBED_STREAM",
    "EVENTS_STREAM",
    "HEARTBEAT_WILDCARD",
    "HISTORY_QUEUE_GROUP",
    "HISTORY_SUMMARY_SUBJECT",
    "MODEL_VIEWS_BUCKET",
    "NSQL_READY_SUBJECT",
    "NSQL_STREAM",
    "NSQL_SUBJECT",
    "PREFIX",
    "RESPONSES_BUCKET",
    "TASKS_STREAM",
    "TASKS_WILDCARD",
    "TOOLS_STREAM",
    "TOOL_SUBJECT",
    "cancel_subject",
    "chat_subject",
    "decode_token",
    "embed_subject",
    "encode_token",
    "event_subject",
    "events_wildcard",
    "heartbeat_subject",
    "task_subject",
)

PREFIX = "modelbus.v1"
MODEL_VIEWS_BUCKET = "modelbus_models"
RESPONSES_BUCKET = "modelbus_responses"  # stored responses (POST /v1/responses with store: true)
EVENTS_STREAM = "MODELBUS_EVENTS"
CHAT_STREAM = "MODELBUS_CHAT"
EMBED_STREAM = "MODELBUS_EMBED"
NSQL_STREAM = "MODELBUS_NSQL"
TASKS_STREAM = "MODELBUS_TASKS"
TOOLS_STREAM = "MODELBUS_TOOLS"
NSQL_SUBJECT = f"{PREFIX}.nsql"
TOOL_SUBJECT = f"{PREFIX}.tool"  # runtime tool calls of models (``params.tools``), run by NSQL workers
NSQL_READY_SUBJECT = (
    f"{PREFIX}.nsql_ready"  # ready NSQL workers answer here (queue group), with their datasets
)
HISTORY_SUMMARY_SUBJECT = f"{PREFIX}.history.summary"  # whoever can query the task history answers
HISTORY_QUEUE_GROUP = "history"
HEARTBEAT_WILDCARD = f"{PREFIX}.heartbeat.>"
TASKS_WILDCARD = f"{PREFIX}.tasks.>"

_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_TOKEN = re.compile(r"(?:[A-Za-z0-9-]|_[0-9A-F]{2})+")


def encode_token(value: str) -> str:
    """Encode any non-empty string as one subject token (see the module docstring)."""
    if not value:
        raise ValueError("an empty string cannot be a subject token")
    return "".join(chr(b) if b in _PLAIN else f"_{b:02X}" for b in value.encode())


def decode_token(token: str) -> str:
    """Invert :func:`encode_token`; raises ValueError on a token it could not have produced."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not an encoded token: {token!r}")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode()


def heartbeat_subject(model: str, worker_id: str) -> str:
    """Where a worker reports on one model it hosts: its heartbeats and its goodbye."""
    return f"{PREFIX}.heartbeat.{encode_token(model)}.{encode_token(worker_id)}"


def event_subject(model: str) -> str:
    return f"{PREFIX}.events.model.{encode_token(model)}"


def events_wildcard() -> str:
    return f"{PREFIX}.events.>"


def chat_subject(model: str) -> str:
    """The work queue of one model's chat requests."""
    return f"{PREFIX}.chat.{encode_token(model)}"


def embed_subject(model: str) -> str:
    """The work queue of one embedding model's requests."""
    return f"{PREFIX}.embed.{encode_token(model)}"


def cancel_subject(request_id: str) -> str:
    """Where the ingress says that a request's client went away."""
    return f"{PREFIX}.cancel.{encode_token(request_id)}"


CANCEL_WILDCARD = f"{PREFIX}.cancel.*"


def task_subject(component: str) -> str:
    """Where a component (``ingress``, ``model_worker``, ``nsql_worker``) reports the tasks it ran."""
    return f"{PREFIX}.tasks.{encode_token(component)}"
