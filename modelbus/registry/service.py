"""The registry: worker heartbeats in, one view per model in the KV bucket, a JetStream event per change.

One lock serialises everything that touches the state: the listener (one heartbeat at a time, the model
recomputed at once) and the tick (TTL expiry, the end of the warm-up, retries after a NATS outage).

Writes follow these rules so that a restart, or two registries at once, never make a view flap:

* the registry writes a model only when its *own* computed view changes (or, once, at the end of the
  warm-up when its view differs from the bucket), never merely because the bucket disagrees with it;
* every write is a compare-and-set on the revision it last saw; on a conflict it re-reads the key and
  stops if the bucket already holds its view (the registry that wrote it has published the event),
  else it retries only after half an interval, once it has heard what the other registry acted on
  (retrying at once could put back a view the other registry had just moved past);
* only the registry whose write succeeded publishes the event, with ``Nats-Msg-Id: <key>:<revision>``;
* after start it listens for 1.25 heartbeat intervals (each live worker beats once in that time) before it
  rewrites a model the bucket already has, so it never judges from half the workers; except on news that
  is conclusive whatever the other workers say: one ready worker (the model is ready), or any worker of a
  model the bucket says has none left (a ``worker.*`` error with no workers, as the last run left it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import anyio
import anyio.abc
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue

from modelbus.config import Config
from modelbus.registry.table import WorkerTable, compute_view, content, group_view, stamp, workers_gone
from modelbus.runtime.jetstream import ensure_events_stream, model_views
from modelbus.schemas.heartbeat import Goodbye, Heartbeat, ModelInfo, worker_report_decoder
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.subjects import (
    HEARTBEAT_WILDCARD,
    decode_token,
    encode_token,
    event_subject,
    heartbeat_subject,
)
from modelbus.schemas.views import GROUP_OWNER, ModelView, status_changed, status_event

__all__ = ("Registry",)

log = structlog.get_logger(__name__)

_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's codes for a failed compare-and-set
_MAX_PENDING_EVENTS = 10_000
_PENDING_HEARTBEATS = 65_536
WARM_UP_INTERVALS = 1.25  # a restarted registry listens this many heartbeat intervals before writing


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the registry last saw of a key in the bucket; ``view`` is None if it could not decode it."""

    view: ModelView | None
    revision: int


@dataclass(frozen=True, slots=True)
class _Event:
    subject: str
    data: bytes
    msg_id: str


class Registry:
    """Aggregates heartbeats into model views; an async context manager, running while entered."""

    def __init__(self, nc: Client, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._clock = clock
        heartbeat = config.runtime.heartbeat
        self._ttl = heartbeat.ttl
        # every live worker beats once per interval: a little more than one interval hears them all
        self._warm_up_s = heartbeat.interval * WARM_UP_INTERVALS
        self._tick_s = min(max(heartbeat.interval / 4, 0.05), 1.0)
        self._grace_s = heartbeat.interval / 2
        self._shutdown_s = config.runtime.shutdown_grace
        self._configured: dict[str, ModelInfo] = (
            {
                m.name: ModelInfo(
                    owned_by=m.from_,
                    datasets=m.datasets,
                    supports_responses_api=True,  # POST /v1/responses serves every model
                )
                for m in config.models
            }
            | {
                e.name: ModelInfo(owned_by=e.from_, datasets=e.datasets, supports_responses_api=False)
                for e in config.embeddings
            }
            | {w.name: ModelInfo(owned_by=GROUP_OWNER, supports_responses_api=True) for w in config.workers}
        )
        # load-balancing workers: their views are derived from their members' (Spice's owned_by "spiceai")
        self._groups: dict[str, tuple[str, ...]] = {w.name: w.members for w in config.workers}
        self._table = WorkerTable(ttl=self._ttl, clock=clock)
        self._decoder = worker_report_decoder()
        self._encoder = msgspec.json.Encoder()
        self._view_decoder = msgspec.json.Decoder(ModelView)
        self._lock = anyio.Lock()
        self._known: dict[str, _Entry] = {}  # the bucket, as last seen
        self._computed: dict[str, ModelView] = {}  # this registry's own view (content), as last computed
        self._dirty: set[str] = set()  # computed differs from known: a write (or delete) is due
        self._baseline: frozenset[str] = frozenset()  # keys in the bucket at start
        self._uncertain: dict[str, bytes] = {}  # writes that failed without a verdict
        self._deferred: dict[str, float] = {}  # after a conflict: no write before this (anyio) time
        self._events: deque[_Event] = deque()
        self._warm = False
        self._listening_since = 0.0
        self._needs_setup = False
        self._kv: KeyValue | None = None
        self._sub: Subscription | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def warming(self) -> bool:
        """True until the registry has listened to heartbeats for one TTL."""
        return not self._warm

    async def __aenter__(self) -> Registry:
        self._kv = await model_views(self._js)
        await ensure_events_stream(self._js)
        self._sub = await self._nc.subscribe(HEARTBEAT_WILDCARD, pending_msgs_limit=_PENDING_HEARTBEATS)
        try:
            self._listening_since = self._clock()
            self._known = await self._snapshot()
            self._baseline = frozenset(self._known)
            log.info("registry.started", models=sorted(self._known), warm_up_s=self._warm_up_s)
            async with self._lock:
                for model in self._configured:
                    self._sync(model)
                await self._flush()
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._sub.unsubscribe()
            raise
        self._tg.start_soon(self._listen, self._sub)
        self._tg.start_soon(self._ticks)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        assert self._sub is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        with anyio.move_on_after(self._shutdown_s, shield=True):
            if not self._nc.is_closed:
                await self._sub.unsubscribe()
            if self._nc.is_connected:
                await self._publish_events()
        log.info("registry.stopped", unpublished_events=len(self._events))

    # -- tasks -----------------------------------------------------------------------------------------

    async def _listen(self, sub: Subscription) -> None:
        async for msg in sub.messages:
            report = self._decode(msg)
            if report is None:
                continue
            async with self._lock:
                try:
                    await self._apply(report)
                except Exception:  # one bad step must not end the registry
                    log.exception("registry.report_failed", model=report.model, worker_id=report.worker_id)

    async def _ticks(self) -> None:
        while True:
            await anyio.sleep(self._tick_s)
            async with self._lock:
                try:
                    await self._tick()
                except Exception:  # one bad step must not end the registry
                    log.exception("registry.tick_failed")

    # -- steps (called with the lock held) ------------------------------------------------------------

    def _decode(self, msg: Msg) -> Heartbeat | Goodbye | None:
        try:
            report = self._decoder.decode(msg.data)
            expected = heartbeat_subject(report.model, report.worker_id)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("registry.bad_message", subject=msg.subject, error=str(exc), size=len(msg.data))
            return None
        if msg.subject != expected:
            log.warning("registry.bad_message", subject=msg.subject, error=f"expected subject {expected}")
            return None
        return report

    async def _apply(self, report: Heartbeat | Goodbye) -> None:
        if isinstance(report, Heartbeat):
            self._table.heartbeat(report)
        elif not self._table.goodbye(report):
            return
        self._sync(report.model)
        await self._flush()

    async def _tick(self) -> None:
        if not self._nc.is_connected:
            # Heartbeats cannot reach a disconnected registry: their silence says nothing about workers.
            self._table.extend()
            if not self._warm:
                self._listening_since = self._clock()
            return
        for model in self._table.expire():
            self._sync(model)
        if not self._warm and self._clock() - self._listening_since >= self._warm_up_s:
            await self._end_warm_up()
        await self._flush()

    async def _end_warm_up(self) -> None:
        try:
            self._known = await self._snapshot()
        except _NATS_ERRORS as exc:
            log.warning("registry.kv_read_failed", error=repr(exc))
            return
        self._warm = True
        models = set(self._configured) | self._table.models() | set(self._known) | set(self._computed)
        for model in sorted(models):
            self._sync(model, against_bucket=True)
        log.info("registry.warm", models=len(models), to_write=sorted(self._dirty))

    def _sync(self, model: str, *, against_bucket: bool = False) -> None:
        """Recompute ``model``; if this registry's view changed and the bucket differs, a write is due."""
        view = self._compute(model)
        if view == self._computed.get(model) and not against_bucket:
            return
        if view is None:
            self._computed.pop(model, None)
        else:
            self._computed[model] = view
        if self._bucket_content(model) != view:
            self._dirty.add(model)
        else:
            self._dirty.discard(model)
            self._deferred.pop(model, None)
        for group, members in self._groups.items():
            if model in members:
                self._sync(group, against_bucket=against_bucket)

    def _compute(self, model: str) -> ModelView | None:
        members = self._groups.get(model)
        if members is not None:
            return group_view(model, self._configured[model], [(m, self._computed.get(m)) for m in members])
        known = self._known.get(model)
        return compute_view(
            model,
            workers=self._table.workers(model),
            departure=self._table.departure(model),
            configured=self._configured,
            known=known.view if known is not None else None,
            warm=self._warm,
        )

    def _bucket_content(self, model: str) -> ModelView | None:
        known = self._known.get(model)
        return content(known.view) if known is not None and known.view is not None else None

    def _held(self, model: str) -> bool:
        """During the warm-up, a model the bucket had at start is written only on conclusive news.

        Hearing only some of the workers, the registry may write a model to turn it ready (one ready worker
        is enough), or to show a worker of a model whose workers the bucket says are gone (any worker
        disproves that). Anything else waits for the end of the warm-up.
        """
        if self._warm or model not in self._baseline:
            return False
        view, known = self._computed.get(model), self._known.get(model)
        bucket = known.view if known is not None else None
        if view is not None and view.status is ModelStatus.READY:
            return bucket is not None and bucket.status is ModelStatus.READY
        return view is None or not view.workers or bucket is None or not workers_gone(bucket)

    async def _flush(self) -> None:
        if not self._nc.is_connected:
            return
        try:
            if self._needs_setup:
                await self._setup()
            now = anyio.current_time()
            for model in sorted(self._dirty):
                if not self._held(model) and self._deferred.get(model, now) <= now:
                    await self._write(model)
            await self._publish_events()
        except _NATS_ERRORS as exc:
            log.warning("registry.nats_failed", error=repr(exc), pending_writes=sorted(self._dirty))
            if isinstance(exc, NoStreamResponseError):
                self._needs_setup = True  # the server may have lost the bucket or the stream

    async def _setup(self) -> None:
        self._kv = await model_views(self._js)
        await ensure_events_stream(self._js)
        self._needs_setup = False

    # -- the bucket and the stream ---------------------------------------------------------------------

    async def _write(self, model: str) -> None:
        assert self._kv is not None
        key = encode_token(model)
        view = self._computed.get(model)
        if view is None:
            await self._delete(model, key)
            return
        known = self._known.get(model)
        previous = known.view if known is not None else None
        record = stamp(view, previous, time.time())
        data = self._encoder.encode(record)
        try:
            if known is None:
                revision = await self._kv.create(key, data)
            else:
                revision = await self._kv.update(key, data, last=known.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            await self._conflict(model, key, previous)
            return
        except BaseException:
            self._uncertain[model] = data  # it may have been written; a re-read will tell
            raise
        self._uncertain.pop(model, None)
        self._written(model, key, previous, record, revision)

    async def _conflict(self, model: str, key: str, previous: ModelView | None) -> None:
        """Someone else wrote the key: adopt it if it is our view, else retry after a grace period.

        The grace lets this registry hear the heartbeats the other one acted on, so that it does not
        overwrite a newer view with an older one.
        """
        if await self._reread(model, key, previous):
            return
        self._deferred[model] = anyio.current_time() + self._grace_s
        log.info("registry.write_conflict", model=model, retry_in_s=self._grace_s)

    async def _reread(self, model: str, key: str, previous: ModelView | None) -> bool:
        """After a CAS conflict: refresh the entry; True if the bucket already holds this registry's view."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            self._known.pop(model, None)
            return False
        assert entry.revision is not None
        data = entry.value or b""
        view = self._decode_view(model, data)
        self._known[model] = _Entry(view, entry.revision)
        if view is not None and self._uncertain.pop(model, None) == data:
            self._written(model, key, previous, view, entry.revision)  # our own write, after all
            return True
        self._sync(model)  # a view judged from the bucket (no worker seen yet) may follow it
        wanted = self._computed.get(model)
        settled = wanted is not None and view is not None and content(view) == wanted
        if not settled and not self._warm and wanted is not None and view is not None:
            settled = not status_changed(view, wanted)  # warming: a partial worker list is no reason
        if settled:
            self._dirty.discard(model)
            self._deferred.pop(model, None)
        return settled

    async def _delete(self, model: str, key: str) -> None:
        assert self._kv is not None
        known = self._known.get(model)
        if known is not None:
            try:
                await self._kv.delete(key, last=known.revision)
            except APIError as exc:
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                await self._conflict(model, key, known.view)
                return
            log.info("model.view.deleted", model=model, revision=known.revision)
        self._known.pop(model, None)
        self._dirty.discard(model)
        self._deferred.pop(model, None)

    def _written(
        self, model: str, key: str, previous: ModelView | None, record: ModelView, revision: int
    ) -> None:
        self._known[model] = _Entry(record, revision)
        self._dirty.discard(model)
        self._deferred.pop(model, None)
        event = status_event(model, previous, record, revision)
        if event is None:
            log.debug("model.view.written", model=model, revision=revision, workers=len(record.workers))
            return
        error_code = record.error.code if record.error is not None else None
        log.info(
            "model.view.changed",
            model=model,
            status=record.status.value,
            error_code=error_code,
            error_message=record.error_message,
            previous=previous.status.value if previous is not None else None,
            revision=revision,
        )
        if len(self._events) >= _MAX_PENDING_EVENTS:
            dropped = self._events.popleft()
            log.warning("registry.event_dropped", msg_id=dropped.msg_id)
        self._events.append(_Event(event_subject(model), self._encoder.encode(event), f"{key}:{revision}"))

    async def _publish_events(self) -> None:
        """Publish queued events in order; one that fails stays first in line for the next tick."""
        while self._events:
            event = self._events[0]
            await self._js.publish(event.subject, event.data, headers={"Nats-Msg-Id": event.msg_id})
            self._events.popleft()

    async def _snapshot(self) -> dict[str, _Entry]:
        """Every view in the bucket, by model id."""
        assert self._kv is not None
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return {}
        found: dict[str, _Entry] = {}
        for key in keys:
            try:
                model = decode_token(key)
            except ValueError:
                log.warning("registry.foreign_key", key=key)
                continue
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue  # deleted since it was listed
            assert entry.revision is not None
            found[model] = _Entry(self._decode_view(model, entry.value), entry.revision)
        return found

    def _decode_view(self, model: str, data: bytes | None) -> ModelView | None:
        try:
            return self._view_decoder.decode(data or b"")
        except msgspec.DecodeError:
            log.warning("registry.bad_view", model=model)
            return None
