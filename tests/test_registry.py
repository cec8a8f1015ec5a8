"""The registry against a real nats-server: heartbeats in, views in the KV bucket, events in the stream."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from modelbus.config import Config, HeartbeatSettings, ModelConfig, NatsSettings, RuntimeSettings
from modelbus.registry import Registry
from modelbus.registry.table import content
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.jetstream import ensure_events_stream, model_views
from modelbus.runtime.nats_client import connected
from modelbus.runtime.worker import WorkerRuntime
from modelbus.schemas.heartbeat import Heartbeat, ModelInfo
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.schemas.subjects import encode_token, event_subject, heartbeat_subject
from modelbus.schemas.views import ModelStatusEvent, ModelView
from modelbus.workers.model.state import ModelState

MODEL = "qwen2.5-coder"
KEY = encode_token(MODEL)
INTERVAL = 0.2
INFO = ModelInfo(owned_by="local:qwen-worker", datasets=("sales",))
AUTH = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.AUTH)
CONNECTION = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.CONNECTION)
WAIT_S = 20  # only a bound against hangs
T = TypeVar("T")


def config(interval: float = INTERVAL, models: tuple[str, ...] = (MODEL,)) -> Config:
    return Config(
        runtime=RuntimeSettings(heartbeat=HeartbeatSettings(interval=interval), shutdown_grace=5),
        models=tuple(ModelConfig(name=m, from_="local:qwen-config") for m in models),
    )


@asynccontextmanager
async def worker(
    nc: Client, worker_id: str, *, interval: float = INTERVAL, model: str = MODEL
) -> AsyncIterator[ModelState]:
    state = ModelState(model, INFO, capacity=2)
    runtime = WorkerRuntime(
        nc,
        kind="model",
        models=[state],
        heartbeat=HeartbeatSettings(interval=interval),
        worker_id=worker_id,
    )
    async with runtime:
        yield state


async def eventually(probe: Callable[[], Awaitable[T | None]]) -> T:
    """Poll ``probe`` until it returns something (bounded only against hangs)."""
    with anyio.fail_after(WAIT_S):
        while (found := await probe()) is None:
            await anyio.sleep(0.02)
        return found


async def read_view(kv: KeyValue, model: str = MODEL) -> tuple[ModelView, int] | None:
    try:
        entry = await kv.get(encode_token(model))
    except KeyNotFoundError:
        return None
    assert entry.revision is not None
    return msgspec.json.decode(entry.value or b"", type=ModelView), entry.revision


async def wait_view(
    kv: KeyValue, predicate: Callable[[ModelView], bool], model: str = MODEL
) -> tuple[ModelView, int]:
    async def probe() -> tuple[ModelView, int] | None:
        found = await read_view(kv, model)
        return found if found is not None and predicate(found[0]) else None

    return await eventually(probe)


def status_is(
    status: ModelStatus, *, workers: int | None = None, code: str | None = None
) -> Callable[[ModelView], bool]:
    def check(view: ModelView) -> bool:
        return (
            view.status is status
            and (workers is None or len(view.workers) == workers)
            and (code is None or (view.error is not None and view.error.code == code))
        )

    return check


class Events:
    """Every status event of MODEL, through a JetStream ordered consumer."""

    def __init__(self) -> None:
        self.items: list[ModelStatusEvent] = []
        self.msg_ids: list[str] = []

    async def start(self, nc: Client, deliver_policy: DeliverPolicy) -> Events:
        js = nc.jetstream()
        await ensure_events_stream(js)
        await js.subscribe(
            event_subject(MODEL), cb=self._on, ordered_consumer=True, deliver_policy=deliver_policy
        )
        return self

    async def _on(self, msg: Msg) -> None:
        self.items.append(msgspec.json.decode(msg.data, type=ModelStatusEvent))
        self.msg_ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))

    async def wait(self, count: int) -> list[ModelStatusEvent]:
        async def probe() -> list[ModelStatusEvent] | None:
            return list(self.items) if len(self.items) >= count else None

        return await eventually(probe)

    def statuses(self) -> list[ModelStatus]:
        return [e.status for e in self.items]


async def wait_warm(*registries: Registry) -> None:
    async def probe() -> bool | None:
        return None if any(r.warming for r in registries) else True

    await eventually(probe)


async def test_a_model_goes_from_loading_to_ready(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    events = await Events().start(nc, DeliverPolicy.ALL)
    async with Registry(nc, config()):
        # a configured model is in the bucket from the start, loading, with what the configuration says
        created, first_revision = await wait_view(kv, status_is(ModelStatus.LOADING, workers=0))
        assert (created.owned_by, created.created > 0) == ("local:qwen-config", True)
        assert created.ever_ready is False
        async with worker(nc, "w-a") as state:
            loading, _ = await wait_view(kv, status_is(ModelStatus.LOADING, workers=1))
            assert loading.owned_by == "local:qwen-worker"  # the worker's info wins
            state.set_ready()
            ready, revision = await wait_view(kv, status_is(ModelStatus.READY))
    assert [(w.worker_id, w.status, w.capacity) for w in ready.workers] == [("w-a", ModelStatus.READY, 2)]
    assert (ready.datasets, ready.ever_ready, ready.created) == (("sales",), True, created.created)
    assert ready.changed_at >= created.changed_at
    got = await events.wait(2)
    assert [(e.status, e.previous) for e in got[:2]] == [
        (ModelStatus.LOADING, None),
        (ModelStatus.READY, ModelStatus.LOADING),
    ]
    assert got[0].revision == first_revision
    assert got[1].revision == revision
    assert (got[1].ready_workers, got[1].workers) == (1, 1)


async def test_ready_if_any_worker_is_ready(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    async with Registry(nc, config()), worker(nc, "w-a") as a, worker(nc, "w-b") as b:
        a.set_error(AUTH, "invalid_api_key")
        await wait_view(kv, status_is(ModelStatus.LOADING, workers=2))
        b.set_ready()
        ready, _ = await wait_view(kv, status_is(ModelStatus.READY))
        assert ready.error is None
        assert [(w.worker_id, w.status, w.error_code) for w in ready.workers] == [
            ("w-a", ModelStatus.ERROR, "model.auth"),
            ("w-b", ModelStatus.READY, None),
        ]
        b.set_error(CONNECTION, "connection refused")
        errored, _ = await wait_view(kv, status_is(ModelStatus.ERROR))
        # both failed: the error shown is the first worker's (by id), whichever failed last
        assert errored.error == AUTH
        assert errored.error_message == "invalid_api_key"


async def test_a_silent_worker_times_out(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    encoder = msgspec.json.Encoder()
    subject = heartbeat_subject(MODEL, "w-silent")
    async with Registry(nc, config()):
        for seq in range(1, 4):
            beat = Heartbeat(
                worker_id="w-silent",
                model=MODEL,
                kind="model",
                status=ModelStatus.READY,
                info=INFO,
                interval_s=INTERVAL,
                seq=seq,
            )
            await nc.publish(subject, encoder.encode(beat))
            await anyio.sleep(INTERVAL)
        await wait_view(kv, status_is(ModelStatus.READY))
        # it stops without a goodbye
        view, _ = await wait_view(kv, status_is(ModelStatus.ERROR))
    assert view.error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.TIMEOUT)
    assert view.error_message == f"no heartbeat from worker w-silent for {3 * INTERVAL:.1f}s"
    assert view.workers == ()
    assert view.ever_ready is True


async def test_a_goodbye_drops_the_worker_at_once(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    slow = 60.0  # a TTL of 3 minutes: only the goodbye can explain what follows
    async with Registry(nc, config(interval=slow)):
        async with worker(nc, "w-a", interval=slow) as state:
            state.set_ready()
            await wait_view(kv, status_is(ModelStatus.READY))
        view, _ = await wait_view(kv, status_is(ModelStatus.ERROR))
    assert view.error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.NOT_FOUND)
    assert view.error_message == "the last worker serving this model shut down"


async def test_events_replay_in_order_from_the_start(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    async with Registry(nc, config()), worker(nc, "w-a") as state:
        state.set_ready()
        await wait_view(kv, status_is(ModelStatus.READY))
        state.set_error(AUTH, "invalid_api_key")
        await wait_view(kv, status_is(ModelStatus.ERROR))
        state.set_ready()
        _, revision = await wait_view(kv, status_is(ModelStatus.READY))
        live = await Events().start(nc, DeliverPolicy.NEW)
        state.set_loading()
        _, last_revision = await wait_view(kv, status_is(ModelStatus.LOADING, workers=1))
        await live.wait(1)

    replay = await Events().start(nc, DeliverPolicy.ALL)
    got = await replay.wait(6)
    assert [e.status for e in got] == [
        ModelStatus.LOADING,
        ModelStatus.READY,
        ModelStatus.ERROR,
        ModelStatus.READY,
        ModelStatus.LOADING,
        ModelStatus.ERROR,  # the worker left (before the registry did)
    ]
    assert [e.previous for e in got] == [None, *(e.status for e in got[:-1])]
    revisions = [e.revision for e in got]
    assert revisions == sorted(set(revisions))
    assert revisions[3:5] == [revision, last_revision]
    assert replay.msg_ids == [f"{KEY}:{r}" for r in revisions]
    assert got[2].error == AUTH
    assert live.items == got[4:]
    assert got[5].error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.NOT_FOUND)


async def test_a_restarted_registry_keeps_the_view(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    async with worker(nc, "w-a") as a, worker(nc, "w-b") as b:
        a.set_ready()
        b.set_ready()
        async with Registry(nc, config()):
            before, revision = await wait_view(kv, status_is(ModelStatus.READY, workers=2))
        events = await Events().start(nc, DeliverPolicy.NEW)
        async with Registry(nc, config()) as registry:
            await wait_warm(registry)
            await anyio.sleep(3 * INTERVAL)  # time for a spurious write to show, if there were one
            assert await read_view(kv) == (before, revision)
            # a real change still goes through, as the very next revision: nothing was written between
            a.set_loading()
            _, first_revision = await wait_view(kv, lambda v: v.workers[0].status is ModelStatus.LOADING)
            b.set_loading()
            after, new_revision = await wait_view(kv, status_is(ModelStatus.LOADING))
            got = await events.wait(1)
    assert (first_revision, new_revision) == (revision + 1, revision + 2)
    assert after.created == before.created
    assert after.ever_ready is True
    assert [(e.status, e.previous, e.revision) for e in got] == [
        (ModelStatus.LOADING, ModelStatus.READY, new_revision)
    ]


async def test_two_registries_write_each_change_once(nc: Client, nats_server: EmbeddedNats) -> None:
    kv = await model_views(nc.jetstream())
    async with (
        connected(NatsSettings(), nats_server.url, name="registry-2") as nc2,
        Registry(nc, config()) as one,
        Registry(nc2, config()) as two,
    ):
        async with worker(nc, "w-a") as a, worker(nc, "w-b") as b:
            a.set_ready()
            b.set_ready()
            _, start = await wait_view(kv, status_is(ModelStatus.READY, workers=2))
            await wait_warm(one, two)
            events = await Events().start(nc, DeliverPolicy.NEW)
            updates: list[tuple[int, ModelView]] = []
            watcher = await kv.watch(KEY)

            async def collect() -> None:
                async for entry in watcher:
                    if entry is not None and entry.revision is not None and entry.value:
                        updates.append((entry.revision, msgspec.json.decode(entry.value, type=ModelView)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                await anyio.sleep(5 * INTERVAL)  # steady workers: nothing to write
                a.set_loading()
                b.set_loading()
                await events.wait(1)
                await anyio.sleep(5 * INTERVAL)
                b.set_ready()
                await events.wait(2)
                await anyio.sleep(5 * INTERVAL)
                tg.cancel_scope.cancel()
            seen = list(events.items)  # before the workers leave

    # the first update is the watcher's initial value: nothing was written while the workers were steady
    assert updates[0][0] == start
    statuses = [v.status for _, v in updates]
    changed = [i for i in range(1, len(updates)) if statuses[i] is not statuses[i - 1]]
    # ready -> loading -> ready, each step once: no flapping back and forth
    assert [statuses[0], *(statuses[i] for i in changed)] == [
        ModelStatus.READY,
        ModelStatus.LOADING,
        ModelStatus.READY,
    ]
    # every write is a new view: neither registry rewrote what the other had written
    views = [content(v) for _, v in updates]
    assert all(x != y for x, y in itertools.pairwise(views))
    assert len(updates) <= 4  # the initial value; w-a loading; w-b loading; w-b ready
    # one event per status change, carrying the revision that made it
    assert [(e.status, e.previous, e.revision) for e in seen] == [
        (statuses[i], statuses[i - 1], updates[i][0]) for i in changed
    ]


async def test_bad_messages_do_not_stop_the_registry(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    encoder = msgspec.json.Encoder()
    async with Registry(nc, config()), worker(nc, "w-a") as state:
        await wait_view(kv, status_is(ModelStatus.LOADING, workers=1))
        good = Heartbeat(worker_id="w-x", model=MODEL, kind="model", status=ModelStatus.READY, info=INFO)
        for subject, payload in [
            (heartbeat_subject(MODEL, "w-x"), b"{not json"),
            (heartbeat_subject(MODEL, "w-x"), b'{"type": "modelbus.v1.heartbeat", "worker_id": 7}'),
            (heartbeat_subject(MODEL, "w-x"), b'{"type": "modelbus.v1.unknown"}'),
            (heartbeat_subject(MODEL, "w-x"), b"\xff\xfe" * 100),
            (heartbeat_subject(MODEL, "w-other"), encoder.encode(good)),  # subject and body disagree
            (heartbeat_subject("another-model", "w-x"), encoder.encode(good)),
        ]:
            await nc.publish(subject, payload)
        await nc.flush()
        state.set_ready()
        ready, _ = await wait_view(kv, status_is(ModelStatus.READY))
    # the impostor never counted as a worker
    assert [w.worker_id for w in ready.workers] == ["w-a"]
    assert await read_view(kv, "another-model") is None


async def test_the_registry_survives_a_nats_restart(nc: Client, nats_server: EmbeddedNats) -> None:
    interval = 0.5
    kv = await model_views(nc.jetstream())
    async with Registry(nc, config(interval=interval)), worker(nc, "w-a", interval=interval) as state:
        state.set_ready()
        _, revision = await wait_view(kv, status_is(ModelStatus.READY))
        # an outage longer than the TTL, during which nobody can hear any heartbeat
        await nats_server.stop()
        await anyio.sleep(2 * 3 * interval)
        await nats_server.start()
        state.set_loading()
        view, after = await wait_view(kv, status_is(ModelStatus.LOADING, workers=1))
        state.set_ready()
        await wait_view(kv, status_is(ModelStatus.READY))
    assert after > revision
    assert view.created > 0
    got = await (await Events().start(nc, DeliverPolicy.ALL)).wait(5)
    # the outage itself was not taken for a dead worker (no error in between)
    assert [e.status for e in got] == [
        ModelStatus.LOADING,
        ModelStatus.READY,
        ModelStatus.LOADING,
        ModelStatus.READY,
        ModelStatus.ERROR,  # the worker's goodbye
    ]


async def test_after_warm_up_the_bucket_is_brought_up_to_date(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    stale = ModelView(id=MODEL, owned_by="local:qwen-config", status=ModelStatus.READY, created=1_700_000_000)
    ghost = ModelView(id="ghost", owned_by="local:ghost", status=ModelStatus.READY)
    await kv.put(KEY, msgspec.json.encode(stale))
    await kv.put(encode_token("ghost"), msgspec.json.encode(ghost))
    events = await Events().start(nc, DeliverPolicy.ALL)
    async with Registry(nc, config()) as registry:
        await wait_warm(registry)
        # the workers it listed died while no registry ran: the model is written once, not found
        view, _ = await wait_view(kv, status_is(ModelStatus.ERROR))

        async def ghost_gone() -> bool | None:
            return True if await read_view(kv, "ghost") is None else None

        await eventually(ghost_gone)
        got = await events.wait(1)
    assert view.error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.NOT_FOUND)
    assert view.error_message == "no worker is serving this model"
    assert view.created == 1_700_000_000
    assert [(e.status, e.previous) for e in got] == [(ModelStatus.ERROR, ModelStatus.READY)]


async def test_while_warming_a_ready_worker_is_shown_at_once(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    slow = 60.0  # a warm-up of 3 minutes
    state = ModelState(MODEL, INFO, capacity=2)
    heartbeat = HeartbeatSettings(interval=slow)
    runtime = WorkerRuntime(nc, kind="model", models=[state], heartbeat=heartbeat, worker_id="w-a")
    async with runtime:
        async with Registry(nc, config(interval=slow)):
            runtime.changed()  # beat now: its first heartbeat went out before this registry listened
            await wait_view(kv, status_is(ModelStatus.LOADING, workers=1))
        async with Registry(nc, config(interval=slow)) as registry:
            state.set_ready()
            view, _ = await wait_view(kv, status_is(ModelStatus.READY))
            assert registry.warming  # one ready worker is conclusive: no need to hear the others
    assert view.ever_ready is True


async def said_goodbye(nc: Client, kv: KeyValue, *, interval: float) -> tuple[ModelView, int]:
    """A run that ends as ``modelbus up`` stops: a worker was ready and said goodbye; the registry left."""
    async with Registry(nc, config(interval=interval)):
        async with worker(nc, "w-last-run", interval=interval) as state:
            state.set_ready()
            await wait_view(kv, status_is(ModelStatus.READY))
        return await wait_view(kv, status_is(ModelStatus.ERROR, workers=0, code="worker.not_found"))


async def test_after_a_restart_a_new_worker_replaces_the_last_runs_goodbye_at_once(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    slow = 60.0  # a warm-up of 75 s: only a write during the warm-up can show the new worker in time
    gone, revision = await said_goodbye(nc, kv, interval=slow)
    assert gone.error_message == "the last worker serving this model shut down"
    events = await Events().start(nc, DeliverPolicy.NEW)
    async with Registry(nc, config(interval=slow)) as registry, worker(nc, "w-new", interval=slow):
        # the new worker reports `loading`: the bucket's "no worker" is disproved, whatever others say
        view, new_revision = await wait_view(kv, status_is(ModelStatus.LOADING, workers=1))
        assert registry.warming
        got = await events.wait(1)
    assert new_revision == revision + 1  # the very next write: no stale view in between
    assert [w.worker_id for w in view.workers] == ["w-new"]
    assert (view.created, view.ever_ready) == (gone.created, True)
    assert [(e.status, e.previous, e.revision) for e in got[:1]] == [
        (ModelStatus.LOADING, ModelStatus.ERROR, new_revision)
    ]


async def test_two_restarted_registries_show_the_new_worker_once(
    nc: Client, nats_server: EmbeddedNats
) -> None:
    kv = await model_views(nc.jetstream())
    slow = 60.0
    _, revision = await said_goodbye(nc, kv, interval=slow)
    events = await Events().start(nc, DeliverPolicy.NEW)
    async with (
        connected(NatsSettings(), nats_server.url, name="registry-2") as nc2,
        Registry(nc, config(interval=slow)) as one,
        Registry(nc2, config(interval=slow)) as two,
        worker(nc, "w-new", interval=slow),
    ):
        view, new_revision = await wait_view(kv, status_is(ModelStatus.LOADING, workers=1))
        await events.wait(1)
        await anyio.sleep(5 * INTERVAL)  # time for a second write or event to show, if there were one
        assert one.warming and two.warming
        assert await read_view(kv) == (view, new_revision)
        assert new_revision == revision + 1
        assert [(e.status, e.previous) for e in events.items] == [(ModelStatus.LOADING, ModelStatus.ERROR)]


async def test_a_restarted_registry_keeps_the_last_runs_goodbye_while_no_worker_reports(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    gone, revision = await said_goodbye(nc, kv, interval=INTERVAL)
    async with Registry(nc, config()) as registry:
        await wait_warm(registry)
        await anyio.sleep(3 * INTERVAL)  # time for a spurious write to show, if there were one
        # the workers are really gone: neither `loading` nor a rewrite of what the last registry concluded
        assert await read_view(kv) == (gone, revision)
