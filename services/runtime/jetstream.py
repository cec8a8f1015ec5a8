"""The JetStream streams and buckets modelbus uses, created idempotently by whoever starts first."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from schemas.subjects import (
    CHAT_STREAM,
    EVENTS_STREAM,
    MODEL_VIEWS_BUCKET,
    NSQL_STREAM,
    NSQL_SUBJECT,
    PREFIX,
    chat_subject,
    encode_token,
    events_wildcard,
)
from services.config import ChatSettings, NsqlSettings

__all__ = (
    "chat_consumer_config",
    "ensure_chat_stream",
    "ensure_consumer",
    "ensure_events_stream",
    "ensure_nsql_stream",
    "model_views",
    "nsql_consumer_config",
)

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


async def _add_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


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
    """The KV bucket of model views (one key per encoded model id, latest value only)."""
    return await js.create_key_value(
        KeyValueConfig(bucket=MODEL_VIEWS_BUCKET, history=1, storage=StorageType.FILE)
    )


async def ensure_chat_stream(js: JetStreamContext, settings: ChatSettings) -> None:
    """The work queues behind ``modelbus.v1.chat.<model>``, bounded per model."""
    await _add_or_update(
        js,
        _work_queue(CHAT_STREAM, f"{PREFIX}.chat.*", depth=settings.queue_depth,
                    request_timeout=settings.request_timeout),
    )  # fmt: skip


def chat_consumer_config(model: str, settings: ChatSettings) -> ConsumerConfig:
    return _pull_consumer(
        f"chat-{encode_token(model)}", chat_subject(model), ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
    )  # fmt: skip


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer, or bring its settings up to date (idempotent)."""
    await js.add_consumer(stream, config)


async def ensure_nsql_stream(js: JetStreamContext, settings: NsqlSettings) -> None:
    """The work queue behind ``modelbus.v1.nsql``, bounded like the chat queues."""
    await _add_or_update(
        js,
        _work_queue(
            NSQL_STREAM, NSQL_SUBJECT, depth=settings.queue_depth, request_timeout=settings.request_timeout
        ),
    )


def nsql_consumer_config(ack_wait: float) -> ConsumerConfig:
    return _pull_consumer("nsql", NSQL_SUBJECT, ack_wait=ack_wait, max_deliver=5)
