"""The registry's pure parts: liveness on an injected clock, aggregation, and the views it wants."""

from __future__ import annotations

import msgspec
import pytest

from modelbus.registry.table import (
    WorkerTable,
    aggregate,
    compute_view,
    content,
    stamp,
)
from modelbus.schemas.heartbeat import Goodbye, Heartbeat, ModelInfo
from modelbus.schemas.status import ErrorCategory, ErrorInfo, ErrorType, ModelStatus
from modelbus.schemas.views import ModelView, status_changed

MODEL = "qwen2.5-coder"
INFO = ModelInfo(owned_by="local:qwen", datasets=("sales",), can_generate_sql=True)
CONFIGURED = {MODEL: ModelInfo(owned_by="local:qwen-from-config", datasets=("sales",))}
AUTH = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.AUTH)
CONNECTION = ErrorInfo.of(ErrorCategory.MODEL, ErrorType.CONNECTION)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(
    worker: str,
    status: ModelStatus = ModelStatus.READY,
    *,
    error: ErrorInfo | None = None,
    message: str | None = None,
    info: ModelInfo = INFO,
    capacity: int = 1,
    in_flight: int = 0,
) -> Heartbeat:
    return Heartbeat(
        worker_id=worker,
        model=MODEL,
        kind="model",
        status=status,
        info=info,
        error=error,
        error_message=message,
        capacity=capacity,
        in_flight=in_flight,
    )


def view_of(table: WorkerTable, *, known: ModelView | None = None, warm: bool = True) -> ModelView | None:
    return compute_view(
        MODEL,
        workers=table.workers(MODEL),
        departure=table.departure(MODEL),
        configured=CONFIGURED,
        known=known,
        warm=warm,
    )


def test_ready_if_any_worker_ready_else_loading_else_error() -> None:
    loading, errored = beat("w-b", ModelStatus.LOADING), beat("w-c", ModelStatus.ERROR, error=AUTH)
    assert aggregate(MODEL, [errored, loading]).status is ModelStatus.LOADING
    view = aggregate(MODEL, [errored, loading, beat("w-z", ModelStatus.READY, capacity=4)])
    assert view.status is ModelStatus.READY
    assert view.error is None
    assert view.error_message is None
    assert [w.worker_id for w in view.workers] == ["w-b", "w-c", "w-z"]
    assert [w.error_code for w in view.workers] == [None, "model.auth", None]
    assert view.workers[2].capacity == 4
    assert (view.owned_by, view.datasets, view.can_generate_sql) == ("local:qwen", ("sales",), True)


def test_error_comes_from_the_first_errored_worker_whatever_the_arrival_order() -> None:
    a = beat("w-a", ModelStatus.ERROR, error=CONNECTION, message="refused")
    b = beat("w-b", ModelStatus.ERROR, error=AUTH, message="invalid_api_key")
    for order in ([a, b], [b, a]):
        view = aggregate(MODEL, order)
        assert (view.status, view.error, view.error_message) == (ModelStatus.ERROR, CONNECTION, "refused")


def test_an_error_without_details_still_carries_an_error_object() -> None:
    view = aggregate(MODEL, [beat("w-a", ModelStatus.ERROR)])
    assert view.error is not None
    assert view.error.code == "model.unknown"


def test_in_flight_is_not_part_of_the_view() -> None:
    assert aggregate(MODEL, [beat("w-a", in_flight=0)]) == aggregate(MODEL, [beat("w-a", in_flight=3)])


def test_a_silent_worker_is_dropped_after_the_ttl_and_the_model_says_why() -> None:
    clock = FakeClock()
    table = WorkerTable(ttl=6.0, clock=clock)
    table.heartbeat(beat("w-a"))
    table.heartbeat(beat("w-b", ModelStatus.LOADING))
    clock.now += 4
    table.heartbeat(beat("w-a"))
    clock.now += 2.5  # w-b silent for 6.5 s, w-a for 2.5 s
    assert table.expire() == {MODEL}
    assert [b.worker_id for b in table.workers(MODEL)] == ["w-a"]
    assert table.departure(MODEL) is None
    clock.now += 3.0  # w-a silent for 5.5 s
    assert table.expire() == set()
    clock.now += 0.5  # exactly the TTL
    assert table.expire() == {MODEL}
    assert table.workers(MODEL) == ()
    view = view_of(table)
    assert view is not None
    assert view.status is ModelStatus.ERROR
    assert view.error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.TIMEOUT)
    assert view.error_message == "no heartbeat from worker w-a for 6.0s"
    assert view.owned_by == "local:qwen"  # the last worker's info, not the configuration's


def test_a_goodbye_drops_the_worker_at_once() -> None:
    table = WorkerTable(ttl=6.0, clock=FakeClock())
    table.heartbeat(beat("w-a"))
    table.heartbeat(beat("w-b"))
    assert not table.goodbye(Goodbye(worker_id="w-unknown", model=MODEL))
    assert table.goodbye(Goodbye(worker_id="w-a", model=MODEL))
    assert table.departure(MODEL) is None
    assert table.goodbye(Goodbye(worker_id="w-b", model=MODEL))
    view = view_of(table)
    assert view is not None
    assert view.error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.NOT_FOUND)
    assert view.error_message == "the last worker serving this model shut down"
    assert table.models() == {MODEL}


def test_a_returning_worker_clears_the_departure() -> None:
    table = WorkerTable(ttl=6.0, clock=FakeClock())
    table.heartbeat(beat("w-a"))
    table.goodbye(Goodbye(worker_id="w-a", model=MODEL))
    table.heartbeat(beat("w-b"))
    assert table.departure(MODEL) is None
    view = view_of(table)
    assert view is not None
    assert view.status is ModelStatus.READY


def test_extend_counts_every_worker_as_just_heard() -> None:
    clock = FakeClock()
    table = WorkerTable(ttl=6.0, clock=clock)
    table.heartbeat(beat("w-a"))
    clock.now += 5
    table.extend()
    clock.now += 5
    assert table.expire() == set()
    clock.now += 1
    assert table.expire() == {MODEL}


def test_a_configured_model_without_workers_loads_then_is_not_found_once_warm() -> None:
    table = WorkerTable(ttl=6.0, clock=FakeClock())
    loading = view_of(table, warm=False)
    assert loading is not None
    assert (loading.status, loading.owned_by, loading.datasets) == (
        ModelStatus.LOADING,
        "local:qwen-from-config",
        ("sales",),
    )
    missing = view_of(table, warm=True)
    assert missing is not None
    assert missing.status is ModelStatus.ERROR
    assert missing.error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.NOT_FOUND)
    assert missing.error_message == "no worker is serving this model"


def test_while_warming_the_bucket_view_stands_for_an_unreported_model() -> None:
    known = stamp(aggregate(MODEL, [beat("w-a")]), None, 1.0e9)
    table = WorkerTable(ttl=6.0, clock=FakeClock())
    assert view_of(table, known=known, warm=False) == content(known)
    # once warm, the workers it lists are judged gone
    gone = view_of(table, known=known, warm=True)
    assert gone is not None
    assert gone.status is ModelStatus.ERROR
    assert gone.owned_by == "local:qwen"


def test_a_worker_error_in_the_bucket_is_kept_rather_than_rewritten() -> None:
    table = WorkerTable(ttl=6.0, clock=FakeClock())
    table.heartbeat(beat("w-a"))
    table.goodbye(Goodbye(worker_id="w-a", model=MODEL))
    gone = view_of(table)
    assert gone is not None
    known = stamp(gone, None, 1.0e9)
    fresh = WorkerTable(ttl=6.0, clock=FakeClock())  # a restarted registry
    assert view_of(fresh, known=known, warm=True) == gone
    # but a model error with no workers left is not a reason the workers are gone
    errored = stamp(aggregate(MODEL, [beat("w-a", ModelStatus.ERROR, error=AUTH)]), None, 1.0e9)
    orphan = msgspec.structs.replace(errored, workers=())
    judged = view_of(fresh, known=orphan, warm=True)
    assert judged is not None
    assert judged.error == ErrorInfo.of(ErrorCategory.WORKER, ErrorType.NOT_FOUND)


def test_an_unconfigured_model_nobody_reports_is_dropped_once_warm() -> None:
    known = stamp(aggregate("ghost", [beat("w-a")]), None, 1.0e9)
    for warm, wanted in ((False, content(known)), (True, None)):
        view = compute_view(
            "ghost", workers=(), departure=None, configured=CONFIGURED, known=known, warm=warm
        )
        assert view == wanted


def test_stamp_keeps_created_and_ever_ready() -> None:
    ready = aggregate(MODEL, [beat("w-a")])
    first = stamp(ready, None, 1_700_000_000.5)
    assert (first.created, first.ever_ready, first.changed_at) == (1_700_000_000, True, 1_700_000_000.5)
    down = stamp(aggregate(MODEL, [beat("w-a", ModelStatus.LOADING)]), first, 1_700_000_100.0)
    assert (down.created, down.ever_ready) == (1_700_000_000, True)
    never = stamp(aggregate(MODEL, [beat("w-a", ModelStatus.LOADING)]), None, 5.0)
    assert never.ever_ready is False
    assert content(first) == content(stamp(ready, first, 1_800_000_000.0))


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        (None, (ModelStatus.LOADING, None), True),
        ((ModelStatus.LOADING, None), (ModelStatus.READY, None), True),
        ((ModelStatus.ERROR, AUTH), (ModelStatus.ERROR, CONNECTION), True),
        ((ModelStatus.ERROR, AUTH), (ModelStatus.ERROR, AUTH), False),
        ((ModelStatus.READY, None), (ModelStatus.READY, None), False),
    ],
)
def test_status_changed(
    before: tuple[ModelStatus, ErrorInfo | None] | None,
    after: tuple[ModelStatus, ErrorInfo | None],
    changed: bool,
) -> None:
    def make(status: ModelStatus, error: ErrorInfo | None) -> ModelView:
        return ModelView(id=MODEL, owned_by="x", status=status, error=error)

    assert status_changed(make(*before) if before else None, make(*after)) is changed
