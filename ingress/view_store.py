"""The registry's model views, kept in memory by watching the KV bucket, so no request waits on NATS.

:class:`ModelViewStore` follows every put, delete and purge in the bucket. A watch starts with a replay of the
current views (a consistent snapshot, swapped in whole when the replay ends) and then follows changes. When
the NATS connection comes back after an outage, the watch is re-created instead of trusting the old ordered
consumer to notice on its own (nats-py does, after two missed idle heartbeats: ~20 s after a restart), and
the fresh replay also drops models deleted meanwhile. A value that does not decode is logged and skipped.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType

import anyio
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from schemas.subjects import decode_token
from schemas.views import ModelView
from services.runtime.jetstream import model_views

__all__ = ("ModelViewStore",)

log = structlog.get_logger(__name__)


class ModelViewStore:
    """An async context manager holding ``{model_id: ModelView}``, current with the KV bucket.

    ``initialized`` turns true once the first view has arrived and stays true. ``version`` grows with every
    change that readers can see, so they may cache whatever they derive from the views.
    """

    def __init__(
        self,
        nc: Client,
        *,
        idle_check_s: float = 1.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        stop_timeout_s: float = 2.0,
    ) -> None:
        self._nc = nc
        self._idle_check_s = idle_check_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._stop_timeout_s = stop_timeout_s
        self._decoder = msgspec.json.Decoder(ModelView)
        self._views: dict[str, ModelView] = {}
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
        replay: dict[str, ModelView] | None = {}
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
            if replay is not None:
                self._apply(replay, entry)
            elif self._apply(self._views, entry):
                self._changed()

    def _apply(self, target: dict[str, ModelView], entry: KeyValue.Entry) -> bool:
        """Put one KV entry into ``target``; False when it changed nothing (or was unreadable)."""
        try:
            model_id = decode_token(entry.key)
        except ValueError:
            log.warning("views.bad_key", key=entry.key, revision=entry.revision)
            return False
        if entry.operation in (KV_DEL, KV_PURGE):
            return target.pop(model_id, None) is not None
        try:
            view = self._decoder.decode(entry.value or b"")
        except msgspec.DecodeError as exc:
            log.warning("views.bad_value", model=model_id, revision=entry.revision, error=str(exc))
            return False
        if view.id != model_id:
            log.warning("views.id_mismatch", model=model_id, view_id=view.id, revision=entry.revision)
            return False
        target[model_id] = view
        return True

    def _replace(self, views: dict[str, ModelView]) -> None:
        self._views = views
        self._watches += 1
        self._changed()
        log.info("views.synced", models=len(views), watch=self._watches)

    def _changed(self) -> None:
        self._sorted = None
        self._version += 1
        if self._views and not self._initialized:
            self._initialized = True
            log.info("views.initialized", models=len(self._views))

    @staticmethod
    async def _stop(watcher: KeyValue.KeyWatcher) -> None:
        try:
            await watcher.stop()  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - the connection may already be gone; nothing to undo
            log.debug("views.watch_stop_failed", error=type(exc).__name__)
