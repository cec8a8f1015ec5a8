"""The registry's model views, kept in memory by watching the KV bucket, so no request waits on NATS.

:class:`ModelViewStore` follows every put, delete and purge in the bucket. A watch starts with a replay of the
current views (a consistent snapshot, swapped in whole when the replay ends) and then follows changes. When
the NATS connection comes back after an outage, the watch is re-created instead of trusting the old ordered
consumer to notice on its own (nats-py does, after two missed idle heartbeats: ~20 s after a restart), and
the fresh replay also drops models deleted meanwhile. A value that does not decode is logged and skipped.

Listeners (:meth:`ModelViewStore.listen`, for the ``/v1/models/events`` stream) get a snapshot of the views
with their KV revisions and then every later change, from the same watch, so nothing falls between the two:
the snapshot is taken and the listener registered in one step on the event loop, and a listener drops any
change at or below the revision it already has for that model. After a re-watch, the replay is compared with
what the store had, so changes made during an outage still reach the listeners. Each listener has a bounded
buffer; one that falls behind is ended (``overflow``) instead of holding memory.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from types import TracebackType

import anyio
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from modelbus.runtime.jetstream import model_views
from modelbus.schemas.subjects import decode_token
from modelbus.schemas.views import ModelView

__all__ = ("ListenerEnd", "ModelViewStore", "ViewChange", "ViewListener")

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ViewChange:
    """One model's view replaced by ``view``, or removed (``view`` None), at KV ``revision``."""

    model: str
    view: ModelView | None
    previous: ModelView | None
    revision: int


class ListenerEnd(enum.StrEnum):
    OVERFLOW = "overflow"  # the listener fell more than its buffer behind
    CLOSED = "closed"  # the store closed its listeners (the ingress is stopping)


class ViewListener:
    """One listener's end: ``snapshot`` (views with their revisions, oldest revision first), then changes.

    :meth:`receive` raises :class:`anyio.EndOfStream` once the listener has ended; ``ended`` is set and
    ``end_reason`` says why. Made only by :meth:`ModelViewStore.listen`.
    """

    def __init__(self, snapshot: tuple[tuple[ModelView, int], ...], revision: int, buffer: int) -> None:
        self.snapshot = snapshot
        self.revision = revision  # the highest revision the store had applied when the snapshot was taken
        self.ended = anyio.Event()
        self.end_reason: ListenerEnd | None = None
        self._floor = {view.id: rev for view, rev in snapshot}
        self._send, self._receive = anyio.create_memory_object_stream[ViewChange](buffer)

    async def receive(self) -> ViewChange:
        return await self._receive.receive()

    def deliver(self, change: ViewChange) -> None:
        """Queue ``change`` unless this listener already has it; end the listener if its buffer is full."""
        if self.end_reason is not None or change.revision <= self._floor.get(change.model, 0):
            return
        self._floor[change.model] = change.revision
        try:
            self._send.send_nowait(change)
        except anyio.WouldBlock:
            self.end(ListenerEnd.OVERFLOW)

    def end(self, reason: ListenerEnd) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self._send.close()
            self.ended.set()

    def close(self) -> None:
        self._send.close()
        self._receive.close()


class ModelViewStore:
    """An async context manager holding ``{model_id: ModelView}``, current with the KV bucket.

    ``initialized`` turns true once the first view has arrived (with ``expect_models=False``, for a
    configuration without models, once the first replay has ended) and stays true. ``version`` grows with
    every change that readers can see, so they may cache whatever they derive from the views.
    """

    def __init__(
        self,
        nc: Client,
        *,
        idle_check_s: float = 1.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        stop_timeout_s: float = 2.0,
        expect_models: bool = True,
    ) -> None:
        self._nc = nc
        self._expect_models = expect_models
        self._idle_check_s = idle_check_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._stop_timeout_s = stop_timeout_s
        self._decoder = msgspec.json.Decoder(ModelView)
        self._views: dict[str, ModelView] = {}
        self._revisions: dict[str, int] = {}
        self._revision = 0
        self._listeners: set[ViewListener] = set()
        self._sorted: tuple[ModelView, ...] | None = ()
        self._initialized = False
        self._version = 0
        self._watches = 0
        self._stack: AsyncExitStack | None = None

    # -- reading (from the event loop's thread, like every handler) --------------------------------------
    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def version(self) -> int:
        return self._version

    @property
    def revision(self) -> int:
        """The highest KV revision applied so far (0 before the first replay has ended)."""
        return self._revision

    @property
    def watches(self) -> int:
        """How many watches have completed their initial replay (more than one after a re-watch)."""
        return self._watches

    @property
    def nats_connected(self) -> bool:
        return bool(self._nc.is_connected)

    def get(self, model_id: str) -> ModelView | None:
        return self._views.get(model_id)

    def __len__(self) -> int:
        return len(self._views)

    def views(self) -> tuple[ModelView, ...]:
        """Every view, sorted by model id."""
        if self._sorted is None:
            self._sorted = tuple(self._views[key] for key in sorted(self._views))
        return self._sorted

    # -- listening ----------------------------------------------------------------------------------------
    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @contextmanager
    def listen(self, *, buffer: int) -> Iterator[ViewListener]:
        """A listener holding the current views and then every change, until the block exits.

        Taking the snapshot and registering happen with no await in between, so no change is missed or
        repeated. ``buffer`` bounds the changes waiting to be received; past it the listener ends.
        """
        snapshot = tuple(
            sorted(((v, self._revisions[k]) for k, v in self._views.items()), key=lambda item: item[1])
        )
        listener = ViewListener(snapshot, self._revision, buffer)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
            listener.close()

    def close_listeners(self) -> None:
        """End every listener (``closed``), e.g. when the ingress begins to stop."""
        for listener in list(self._listeners):
            listener.end(ListenerEnd.CLOSED)

    def _notify(self, change: ViewChange) -> None:
        self._revision = max(self._revision, change.revision)
        for listener in list(self._listeners):
            listener.deliver(change)

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def __aenter__(self) -> ModelViewStore:
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._run)
            stack.callback(tg.cancel_scope.cancel)  # runs before the task group exits: stop watching at once
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    # -- watching -----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self._retry_initial_s
        while True:
            reconnects = self._reconnects()
            try:
                kv = await model_views(self._nc.jetstream())
                watcher = await kv.watchall()
            except Exception as exc:  # noqa: BLE001 - NATS down or JetStream not ready: retry, never die
                log.warning("views.watch_failed", error=type(exc).__name__, detail=str(exc), retry_in_s=delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = self._retry_initial_s
            try:
                await self._follow(watcher, reconnects)
                log.info("views.rewatch", reason="nats reconnected")
            except Exception as exc:  # a bug here must not take the ingress down: log it and start over
                log.exception("views.follow_failed", error=type(exc).__name__)
                await anyio.sleep(self._retry_max_s)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._stop_timeout_s):
                    await self._stop(watcher)

    def _reconnects(self) -> int:
        return int(self._nc.stats["reconnects"])

    async def _follow(self, watcher: KeyValue.KeyWatcher, reconnects: int) -> None:
        """Apply updates until the connection has been re-established since the watch began."""
        replay: _Replay | None = _Replay()
        while True:
            try:
                entry = await watcher.updates(timeout=self._idle_check_s)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                if self._reconnects() != reconnects:
                    return
                continue
            if entry is None:  # end of the initial replay
                if replay is not None:
                    self._replace(replay)
                    replay = None
                continue
            if not isinstance(entry, KeyValue.Entry):  # the watcher was stopped under us
                return
            read = self._read(entry)
            if read is None:
                continue
            if replay is not None:
                replay.apply(*read, int(entry.revision or 0))
            else:
                self._apply(*read, int(entry.revision or 0))

    def _read(self, entry: KeyValue.Entry) -> tuple[str, ModelView | None] | None:
        """The model and its view (None: deleted) of one KV entry; None when it is unreadable."""
        try:
            model_id = decode_token(entry.key)
        except ValueError:
            log.warning("views.bad_key", key=entry.key, revision=entry.revision)
            return None
        if entry.operation in (KV_DEL, KV_PURGE):
            return model_id, None
        try:
            view = self._decoder.decode(entry.value or b"")
        except msgspec.DecodeError as exc:
            log.warning("views.bad_value", model=model_id, revision=entry.revision, error=str(exc))
            return None
        if view.id != model_id:
            log.warning("views.id_mismatch", model=model_id, view_id=view.id, revision=entry.revision)
            return None
        return model_id, view

    def _apply(self, model_id: str, view: ModelView | None, revision: int) -> None:
        """Apply one live change and tell the listeners."""
        previous = self._views.get(model_id)
        if view is None:
            if previous is None:
                return
            del self._views[model_id]
            del self._revisions[model_id]
        else:
            self._views[model_id] = view
            self._revisions[model_id] = revision
        self._changed()
        self._notify(ViewChange(model_id, view, previous, revision))

    def _replace(self, replay: _Replay) -> None:
        """Swap in a replay's views; every difference from the views held so far is a change."""
        old, old_revisions = self._views, self._revisions
        self._views, self._revisions = replay.views, replay.revisions
        self._watches += 1
        self._changed()
        log.info("views.synced", models=len(replay.views), watch=self._watches)
        changes = [
            ViewChange(model, view, old.get(model), replay.revisions[model])
            for model, view in replay.views.items()
            if old_revisions.get(model) != replay.revisions[model]
        ]
        # a removal's revision is its delete marker's; were the marker purged, one past what we had
        changes += [
            ViewChange(
                model, None, view, replay.deleted.get(model, max(replay.revision, old_revisions[model] + 1))
            )
            for model, view in old.items()
            if model not in replay.views
        ]
        for change in sorted(changes, key=lambda c: c.revision):
            self._notify(change)
        self._revision = max(self._revision, replay.revision)

    def _changed(self) -> None:
        self._sorted = None
        self._version += 1
        if (self._views or not self._expect_models) and not self._initialized:
            self._initialized = True
            log.info("views.initialized", models=len(self._views))

    @staticmethod
    async def _stop(watcher: KeyValue.KeyWatcher) -> None:
        try:
            await watcher.stop()  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - the connection may already be gone; nothing to undo
            log.debug("views.watch_stop_failed", error=type(exc).__name__)


class _Replay:
    """The views a watch's initial replay delivers, with their revisions and the deletes it saw."""

    def __init__(self) -> None:
        self.views: dict[str, ModelView] = {}
        self.revisions: dict[str, int] = {}
        self.deleted: dict[str, int] = {}
        self.revision = 0

    def apply(self, model_id: str, view: ModelView | None, revision: int) -> None:
        self.revision = max(self.revision, revision)
        if view is None:
            self.views.pop(model_id, None)
            self.revisions.pop(model_id, None)
            self.deleted[model_id] = revision
        else:
            self.views[model_id] = view
            self.revisions[model_id] = revision
            self.deleted.pop(model_id, None)
