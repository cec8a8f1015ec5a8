"""``modelbus up``'s wait before it starts the ingress, on a real nats-server: only a view the registry wrote
since ``up`` began, and that lists a worker, shows that the registry has heard from the model's worker."""

from __future__ import annotations

import anyio
import msgspec
from nats.aio.client import Client
from nats.js.kv import KeyValue

from modelbus.cli.launcher import Reports
from modelbus.runtime.jetstream import model_views
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.subjects import encode_token
from modelbus.schemas.views import ModelView, WorkerView

MODEL = "gpt-4.1"
OTHER = "qwen2.5-coder"
WAIT_S = 20  # only a bound against hangs


async def put(kv: KeyValue, model: str, status: ModelStatus, *workers: str) -> None:
    listed = tuple(WorkerView(worker_id=w, status=status, capacity=1) for w in workers)
    view = ModelView(id=model, owned_by="openai:x", status=status, workers=listed)
    await kv.put(encode_token(model), msgspec.json.encode(view))


async def test_reports_wait_for_a_view_written_since_the_mark_that_lists_a_worker(nc: Client) -> None:
    kv = await model_views(nc.jetstream())
    await put(kv, MODEL, ModelStatus.READY, "w-last-run")  # what the last run left: it does not count
    reports = Reports(kv, [MODEL, OTHER])
    await reports.mark()
    done = anyio.Event()

    async def wait() -> None:
        await reports.wait()
        done.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await put(kv, MODEL, ModelStatus.LOADING)  # the registry's first write: no worker heard yet
            await put(kv, OTHER, ModelStatus.LOADING, "w-other")
            while reports.pending != [MODEL]:
                await anyio.sleep(0.02)
            assert not done.is_set()
            await put(kv, MODEL, ModelStatus.LOADING, "w-new")
            await done.wait()
    assert reports.pending == []
