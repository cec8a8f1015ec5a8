"""What every worker publishes about each model it hosts on ``modelbus.v1.heartbeat.<model>.<worker>``."""

from __future__ import annotations

import msgspec

from modelbus.schemas.status import ErrorInfo, ModelStatus

__all__ = ("Goodbye", "Heartbeat", "ModelInfo", "WorkerReport", "worker_report_decoder")


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker knows about a model from its configuration; the registry lists it as is."""

    owned_by: str
    datasets: tuple[str, ...] = ()
    supports_responses_api: bool = False
    can_generate_sql: bool = False


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, tag="modelbus.v1.heartbeat", tag_field="type"):
    worker_id: str
    model: str
    kind: str  # the worker kind; only model workers send heartbeats (NSQL workers answer nsql_ready)
    status: ModelStatus
    info: ModelInfo
    error: ErrorInfo | None = None
    error_message: str | None = None
    capacity: int = 1
    in_flight: int = 0
    version: str = ""
    interval_s: float = 2.0
    seq: int = 0
    sent_at: float = 0.0  # unix seconds, for humans; liveness is judged on the receiver's clock
    metadata: dict[str, str] = {}


class Goodbye(msgspec.Struct, frozen=True, kw_only=True, tag="modelbus.v1.goodbye", tag_field="type"):
    """A worker that shuts down says so, and is dropped at once instead of after the TTL."""

    worker_id: str
    model: str
    reason: str = "shutdown"


WorkerReport = Heartbeat | Goodbye


def worker_report_decoder() -> msgspec.json.Decoder[Heartbeat | Goodbye]:
    return msgspec.json.Decoder(WorkerReport)
