"""The AsyncAPI 3.0 document of what subscribers can read on the bus, generated from ``schemas/``.

Every message payload schema comes from :func:`msgspec.json.schema_components` over the wire Structs, so the
document cannot describe a field the code does not send. The subjects come from
:mod:`modelbus.schemas.subjects`. ``python -m modelbus.schemas.asyncapi`` prints it; ``docs/asyncapi.json`` is
that output, and a test keeps the two equal (regenerate with ``.venv/bin/python -m modelbus.schemas.asyncapi >
docs/asyncapi.json``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

from modelbus.schemas.heartbeat import Goodbye, Heartbeat
from modelbus.schemas.history import TaskEvent
from modelbus.schemas.subjects import EVENTS_STREAM, MODEL_VIEWS_BUCKET, PREFIX, TASKS_STREAM, encode_token
from modelbus.schemas.views import ModelStatusEvent, ModelView

__all__ = ("asyncapi_document", "main")

_SCHEMAS = "#/components/schemas/"
# (component name, Struct, message title, the headers it travels with)
_MESSAGES: tuple[tuple[str, type[msgspec.Struct], str, dict[str, str]], ...] = (
    (
        "ModelStatusEvent",
        ModelStatusEvent,
        "A model's status or error code changed",
        {"Nats-Msg-Id": "`<encoded model>:<KV revision>`: JetStream drops a repeated event"},
    ),
    ("ModelView", ModelView, "The registry's current view of one model", {}),
    ("Heartbeat", Heartbeat, "A worker's state of one model it hosts, every heartbeat interval", {}),
    ("Goodbye", Goodbye, "A worker stops hosting a model (the registry drops it at once)", {}),
    ("TaskEvent", TaskEvent, "One unit of work, as a span of a W3C trace", {}),
)

_ENCODING = (
    "Ids in subject tokens and KV keys are encoded (`modelbus/schemas/subjects.py`): ASCII letters, digits "
    "and `-` stay as they are, every other byte of the id's UTF-8 form becomes `_XX` (two upper-case hex "
    "digits). So `qwen2.5-coder` is the token `qwen2_2E5-coder` and `meta/llama_3` is `meta_2Fllama_5F3`. "
    "The encoding is injective and yields valid subject tokens, so decode a token back to the id, or encode "
    "an id to subscribe to one model; the payloads carry the ids unencoded."
)
_MODEL = {"description": "The model id, encoded (see the document's description), e.g. `qwen2_2E5-coder`."}

_CHANNELS: dict[str, dict[str, Any]] = {
    "modelStatus": {
        "address": f"{PREFIX}.events.model.{{model}}",
        "title": "Model status changes",
        "description": f"JetStream stream `{EVENTS_STREAM}`: one `ModelStatusEvent` each time a model's "
        "status or error code changes, published by the registry whose write of the view succeeded (exactly "
        "one per change, even with several registries). Replayable: 7 days, at most 10,000 per model. "
        f"Subscribe to `{PREFIX}.events.model.>` for every model, with a core subscription (live only) or a "
        "JetStream consumer (replay; `DeliverLastPerSubject` gives each model's latest event).",
        "parameters": {"model": _MODEL},
        "messages": {"ModelStatusEvent": {"$ref": "#/components/messages/ModelStatusEvent"}},
    },
    "modelViews": {
        "address": f"$KV.{MODEL_VIEWS_BUCKET}.{{model}}",
        "title": "Model views (JetStream KV)",
        "description": f"The KV bucket `{MODEL_VIEWS_BUCKET}` (history 1), key: the encoded model id, value: "
        "the model's `ModelView`. Read it with a KV client (`get`, `watch`); each write's KV revision is the "
        "`revision` of the `ModelStatusEvent` it caused. A delete or purge (no value) means the model left.",
        "parameters": {"model": _MODEL},
        "messages": {"ModelView": {"$ref": "#/components/messages/ModelView"}},
    },
    "heartbeats": {
        "address": f"{PREFIX}.heartbeat.{{model}}.{{worker}}",
        "title": "Worker heartbeats",
        "description": "Core NATS (not stored): each model worker sends a `Heartbeat` per hosted model every "
        "`runtime.heartbeat.interval` and at once on a change, and a `Goodbye` when it stops. The registry "
        f"listens on `{PREFIX}.heartbeat.>` and drops a worker silent for 3 intervals. Tell the two messages "
        "apart by their `type` field.",
        "parameters": {
            "model": _MODEL,
            "worker": {"description": "The worker id, encoded, e.g. `model-host1-4242-a1b2c3`."},
        },
        "messages": {
            "Heartbeat": {"$ref": "#/components/messages/Heartbeat"},
            "Goodbye": {"$ref": "#/components/messages/Goodbye"},
        },
    },
    "taskEvents": {
        "address": f"{PREFIX}.tasks.{{component}}",
        "title": "Task history",
        "description": f"JetStream stream `{TASKS_STREAM}`: a `TaskEvent` for every unit of work a component "
        "did, a span of the request's W3C trace (`trace_id`, `span_id`, `parent_span_id`).",
        "parameters": {
            "component": {
                "description": "The component that did the work, encoded: "
                + ", ".join(f"`{encode_token(c)}` ({c})" for c in ("ingress", "model_worker", "nsql_worker"))
                + ".",
            }
        },
        "messages": {"TaskEvent": {"$ref": "#/components/messages/TaskEvent"}},
    },
}

_OPERATIONS = {
    "publishModelStatus": ("modelStatus", "The registry publishes a status change."),
    "writeModelView": ("modelViews", "The registry writes a model's view (compare-and-set on the revision)."),
    "sendHeartbeat": ("heartbeats", "A model worker reports on a model it hosts."),
    "publishTaskEvent": ("taskEvents", "A component reports a finished unit of work."),
}


def _message(name: str, struct: type[msgspec.Struct], title: str, headers: dict[str, str]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": title,
        "contentType": "application/json",
        "payload": {"$ref": _SCHEMAS + name},
    }
    tag = struct.__struct_config__.tag
    if tag is not None:
        message["summary"] = f'JSON, tagged `"type": "{tag}"`.'
    if headers:
        message["headers"] = {
            "type": "object",
            "properties": {key: {"type": "string", "description": text} for key, text in headers.items()},
        }
    return message


def asyncapi_document(version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document (a JSON-ready dict); the same for the same ``schemas/``."""
    _, components = msgspec.json.schema_components(
        [struct for _, struct, _, _ in _MESSAGES], ref_template=_SCHEMAS + "{name}"
    )
    schemas = msgspec.json.decode(msgspec.json.encode(components))  # plain JSON values (a tuple default: [])
    operations = {
        name: {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{message}"}
                for message in _CHANNELS[channel]["messages"]
            ],
        }
        for name, (channel, summary) in _OPERATIONS.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "modelbus events",
            "version": version,
            "description": "What modelbus publishes on NATS for anyone to read: model status changes, the "
            "registry's model views, worker heartbeats and the task history. The operations are modelbus's "
            f"own (it sends); a subscriber receives on the same channels. {_ENCODING} Every message is JSON; "
            "unknown fields must be ignored (new fields are added with defaults).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "`./run up` starts nats-server on a free loopback port and writes its URL to "
                "`.modelbus/nats.url`; elsewhere, the `runtime.nats.url` of the configuration.",
            }
        },
        "channels": _CHANNELS,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": {name: _message(name, struct, title, h) for name, struct, title, h in _MESSAGES},
        },
    }


def main() -> None:
    sys.stdout.write(json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
