"""The JetStream streams and buckets modelbus uses, created idempotently by whoever starts first."""

from __future__ import annotations

from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from modelbus.config import HistorySettings, QueueSettings
from modelbus.schemas.jobs import JobKind
from modelbus.schemas.subjects import (
    EVENTS_STREAM,
    MODEL_VIEWS_BUCKET,
    RESPONSES_BUCKET,
    TASKS_STREAM,
    TASKS_WILDCARD,
    events_wildcard,
)

__all__ = (
    "ensure_consumer",
    "ensure_events_stream",
    "ensure_tasks_stream",
    "ensure_work_queue",
    "history_consumer_config",
    "model_views",
    "response_store",
    "work_queue_consumer",
)

log = structlog.get_logger(__name__)
EVENTS_MAX_AGE_S = 7 * 24 * 3600
EVENTS_PER_SUBJECT = 10_000
DEDUPE_WINDOW_S = 10.0


async def ensure_events_stream(js: JetStreamContext) -> None:
    """The stream behind ``modelbus.v1.events.>``: replayable, de-duplicated by ``Nats-Msg-Id``."""
    config = StreamConfig(
        name=EVENTS_STREAM,
        subjects=[events_wildcard()],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        max_msgs_per_subject=EVENTS_PER_SUBJECT,
        discard=DiscardPolicy.OLD,
        duplicate_window=120,
    )
    await _add_or_update(js, config)


async def _existing_replicas(js: JetStreamContext, stream: str) -> int | None:
    """The replica count an existing stream has, or None when there is no such stream."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return None
    return info.config.num_replicas


async def _add_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to ``config`` but keep its replica count.

    modelbus creates every stream with one replica; an operator raises it on a cluster with
    ``nats stream edit <stream> --replicas 3``, and a process that starts later must not undo that.
    """
    try:
        await js.add_stream(config)
    except BadRequestError:
        assert config.name is not None
        replicas = await _existing_replicas(js, config.name)
        await js.update_stream(config.evolve(num_replicas=replicas) if replicas else config)


def _work_queue(name: str, subject: str, *, depth: int, request_timeout: float) -> StreamConfig:
    """A work queue bounded per subject: a full queue refuses new messages (the publisher answers 429)."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_msgs_per_subject=depth,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_age=request_timeout * 2,
        # ids are ours (a uuid per request) and a publish is never retried: a short window only guards a
        # resent message, and keeps the server from remembering every id for minutes (RSS, in the soak)
        duplicate_window=min(DEDUPE_WINDOW_S, request_timeout),
    )


def _pull_consumer(durable: str, subject: str, *, ack_wait: float, max_deliver: int) -> ConsumerConfig:
    """The durable pull consumer every worker of a queue shares (a work queue allows one per subject)."""
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=-1,
        max_waiting=4096,
    )


async def model_views(js: JetStreamContext) -> KeyValue:
    """The KV bucket of model views (one key per encoded model id, latest value only).

    An existing bucket is used as it is: an operator may have made it with more replicas (``nats kv add``,
    ``nats stream edit KV_modelbus_models --replicas 3``), and creating it again with another configuration
    is refused by the server.
    """
    return await _bucket(js, KeyValueConfig(bucket=MODEL_VIEWS_BUCKET, history=1, storage=StorageType.FILE))


async def response_store(js: JetStreamContext, *, keep: float) -> KeyValue:
    """The KV bucket of stored responses (one key per response id), each kept ``keep`` seconds; an existing
    bucket is used as it is, as :func:`model_views` says (another TTL included)."""
    config = KeyValueConfig(bucket=RESPONSES_BUCKET, history=1, ttl=keep, storage=StorageType.FILE)
    return await _bucket(js, config)


async def _bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket ``config`` names, created with ``config`` only when there is none."""
    assert config.bucket is not None
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)


async def ensure_work_queue(js: JetStreamContext, kind: JobKind[Any, Any], settings: QueueSettings) -> None:
    """The work queue of a kind of job (chat: ``modelbus.v1.chat.<model>``, one bound per model)."""
    await _add_or_update(
        js,
        _work_queue(kind.stream, kind.wildcard, depth=settings.queue_depth,
                    request_timeout=settings.request_timeout),
    )  # fmt: skip


def work_queue_consumer(kind: JobKind[Any, Any], queue: str, settings: QueueSettings) -> ConsumerConfig:
    """The durable consumer every worker of one queue shares."""
    return _pull_consumer(
        kind.durable(queue), kind.subject(queue), ack_wait=settings.ack_wait, max_deliver=settings.max_deliver
    )


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer, or bring its settings up to date (idempotent)."""
    await js.add_consumer(stream, config)


async def ensure_tasks_stream(js: JetStreamContext, settings: HistorySettings) -> None:
    """The stream behind ``modelbus.v1.tasks.>``: each task event waits here until every history sink's
    consumer has written it (interest retention), bounded by age and size while sinks are away. It is a
    buffer, not an archive: ClickHouse keeps the history. Events made before any sink's consumer existed
    are not kept."""
    config = StreamConfig(
        name=TASKS_STREAM,
        subjects=[TASKS_WILDCARD],
        retention=RetentionPolicy.INTEREST,
        storage=StorageType.FILE,
        max_age=settings.retention,
        max_bytes=settings.max_bytes,
        discard=DiscardPolicy.OLD,
    )
    try:
        await _add_or_update(js, config)
    except BadRequestError as exc:  # e.g. a stream made by an older version, whose retention cannot change
        log.warning("jetstream.tasks_stream_kept", stream=TASKS_STREAM, reason=str(exc)[:200])


def history_consumer_config(durable: str, subject: str, *, ack_wait: float) -> ConsumerConfig:
    """A history sink's durable consumer on one stream: everything from the start, acknowledged per batch."""
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=-1,
    )
